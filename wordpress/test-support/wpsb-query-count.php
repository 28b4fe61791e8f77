<?php
/**
 * TEST SITES ONLY, command line only: count the database queries of the plugin's upserts, as an
 * administrator, in one process (SAVEQUERIES), to see where a user write goes.
 *
 *   php wpsb-query-count.php SITE_DIR PORT [N] [MU_PLUGIN_DIR]
 *
 * MU_PLUGIN_DIR loads the must-use plugins from another folder (e.g. an older copy of the plugin,
 * to compare). Prints one JSON object: for each of single_create, single_changed,
 * single_unchanged, batch_create, batch_changed, batch_unchanged (N users each): queries per user,
 * and meta_reads per user (queries reading all of a user's meta, update_meta_cache()). The
 * *_unchanged_cold phases repeat the unchanged one with the users dropped from WordPress's cache
 * first, as a request finds them (the object cache lives for one request unless the site has a
 * persistent one).
 *
 * @package wp-sync-bridge
 */

if ( 'cli' !== PHP_SAPI || $argc < 3 ) {
	fwrite( STDERR, "usage: php wpsb-query-count.php SITE_DIR PORT [N] [MU_PLUGIN_DIR]\n" );
	exit( 2 );
}
if ( isset( $argv[4] ) ) {
	define( 'WPMU_PLUGIN_DIR', $argv[4] );
}
require __DIR__ . '/wpsb-cli-boot.php';

$n   = (int) ( $argv[3] ?? 10 );
$tag = wp_generate_password( 8, false );

/**
 * Upsert arguments for user $i of a run.
 *
 * @param string $run  Run name.
 * @param int    $i    Position.
 * @param string $last Last name.
 * @return array
 */
function wpsb_qc_args( $run, $i, $last ) {
	global $tag;
	return array(
		'email'          => "qc-$run-$tag-$i@example.com",
		'first_name'     => 'Query',
		'last_name'      => $last,
		// A batch carries at most WPSB_BATCH_MAX_PASSWORDS (10) items with a password (plugin 2.4).
		'password'       => $i < 10 ? 'qc-password-' . $i : null,
		'meta'           => array( 'qc_city' => 'Rome' ),
		'tags'           => array( 'lead' ),
		'tags_key'       => 'qc_tags',
		'contact_id'     => "qc-$run-$tag-$i",
		'contact_id_key' => 'qc_contact_id',
	);
}

/**
 * Run $fn and count its queries.
 *
 * @param callable $fn Work.
 * @return array{queries: int, meta_reads: int}
 */
function wpsb_qc_count( callable $fn ) {
	global $wpdb;
	$wpdb->queries = array();
	$fn();
	$reads = 0;
	foreach ( $wpdb->queries as $q ) {
		if ( preg_match( "/^SELECT user_id, meta_key, meta_value FROM {$wpdb->usermeta} WHERE user_id IN/", $q[0] ) ) {
			++$reads;
		}
	}
	return array(
		'queries'    => count( $wpdb->queries ),
		'meta_reads' => $reads,
	);
}

$out     = array( 'plugin_version' => WPSB_PLUGIN_VERSION );
$phases  = array(
	'create'         => 'one',
	'changed'        => 'two',
	'unchanged'      => 'two',
	'unchanged_cold' => 'two',
);
$batched = function_exists( 'wpsb_op_upsert_users' );
foreach ( array( 'single', 'batch' ) as $mode ) {
	if ( 'batch' === $mode && ! $batched ) {
		continue;
	}
	foreach ( $phases as $phase => $last ) {
		$items = array();
		for ( $i = 0; $i < $n; $i++ ) {
			$items[] = wpsb_qc_args( $mode, $i, $last );
		}
		if ( 'unchanged_cold' === $phase ) {
			foreach ( $items as $item ) {
				clean_user_cache( get_user_by( 'email', $item['email'] ) );
			}
		}
		$count = wpsb_qc_count(
			static function () use ( $mode, $items, $phase ) {
				$results = 'batch' === $mode
					? wpsb_op_upsert_users( array( 'users' => $items ) )['results']
					: array_map( 'wpsb_op_upsert_user', $items );
				foreach ( $results as $r ) {
					$want = array(
						'create'         => 'created',
						'changed'        => 'updated',
						'unchanged'      => 'unchanged',
						'unchanged_cold' => 'unchanged',
					)[ $phase ];
					if ( is_wp_error( $r ) || $r['outcome'] !== $want ) {
						fwrite( STDERR, "unexpected result: " . wp_json_encode( is_wp_error( $r ) ? $r->get_error_message() : $r ) . "\n" );
						exit( 1 );
					}
				}
			}
		);
		$out[ "{$mode}_{$phase}" ] = array(
			'queries_per_user'    => round( $count['queries'] / $n, 1 ),
			'meta_reads_per_user' => round( $count['meta_reads'] / $n, 1 ),
		);
	}
}
echo wp_json_encode( $out, JSON_PRETTY_PRINT ) . "\n";
