<?php
/**
 * TEST SITES ONLY, command line only: whether a batch caches its users' meta exactly as
 * update_meta_cache() does (WPSB_Batch_Prime reads the meta in the statement that locks it).
 *
 *   php wpsb-meta-prime-check.php SITE_DIR PORT [filtered]
 *
 * Makes users with varied meta (several values under one key, serialized and empty values, a
 * NULL value, a key that looks like a number, a user with no meta at all), runs a batch of
 * unchanged upserts for them, and compares each user's cached meta with what
 * update_meta_cache() caches after the cache is dropped. "filtered": with a filter on
 * update_user_metadata_cache that leaves the answer to WordPress. Prints one JSON object:
 * users, equal (bool), differing (user IDs), meta_queries (queries of the batch reading
 * usermeta rows by user).
 *
 * @package wp-sync-bridge
 */

if ( 'cli' !== PHP_SAPI || $argc < 3 ) {
	fwrite( STDERR, "usage: php wpsb-meta-prime-check.php SITE_DIR PORT [filtered]\n" );
	exit( 2 );
}
require __DIR__ . '/wpsb-cli-boot.php';
if ( 'filtered' === ( $argv[3] ?? '' ) ) {
	add_filter( 'update_user_metadata_cache', static function ( $check ) { return $check; }, 10, 2 );
}
global $wpdb;
$tag   = wp_generate_password( 8, false );
$items = array();
$ids   = array();
for ( $i = 0; $i < 5; $i++ ) {
	$email = "mp-$tag-$i@example.com";
	$id    = wp_insert_user( array( 'user_login' => "mp-$tag-$i", 'user_email' => $email, 'user_pass' => wp_generate_password() ) );
	$ids[] = $id;
	$items[] = array( 'email' => $email, 'create' => false );
}
add_user_meta( $ids[0], 'mp_many', 'b' );
add_user_meta( $ids[0], 'mp_many', 'a' );
add_user_meta( $ids[0], 'mp_many', 'b' );
add_user_meta( $ids[1], 'mp_list', array( 'x' => 1, 'y' => array( 2, 3 ) ) );
add_user_meta( $ids[1], 'mp_empty', '' );
add_user_meta( $ids[2], '42', 'numeric key' );
$wpdb->insert( $wpdb->usermeta, array( 'user_id' => $ids[2], 'meta_key' => 'mp_null', 'meta_value' => null ) );
add_user_meta( $ids[3], 'mp_late', 'after' );
add_user_meta( $ids[0], 'mp_late', 'interleaved' );
$wpdb->delete( $wpdb->usermeta, array( 'user_id' => $ids[4] ) ); // No meta at all.
foreach ( $ids as $id ) {
	clean_user_cache( $id );
}

$wpdb->queries = array();
$results       = wpsb_op_upsert_users( array( 'users' => $items ) )['results'];
foreach ( $results as $r ) {
	if ( is_wp_error( $r ) || 'unchanged' !== $r['outcome'] ) {
		fwrite( STDERR, 'unexpected result: ' . wp_json_encode( is_wp_error( $r ) ? $r->get_error_message() : $r ) . "\n" );
		exit( 1 );
	}
}
$meta_queries = 0;
foreach ( $wpdb->queries as $q ) {
	if ( preg_match( "/FROM {$wpdb->usermeta} WHERE user_id IN/", $q[0] ) ) {
		++$meta_queries;
	}
}
$cached = array();
foreach ( $ids as $id ) {
	$cached[ $id ] = wp_cache_get( $id, 'user_meta' );
	wp_cache_delete( $id, 'user_meta' );
}
update_meta_cache( 'user', $ids );
$differing = array();
foreach ( $ids as $id ) {
	if ( wp_cache_get( $id, 'user_meta' ) !== $cached[ $id ] ) {
		$differing[] = $id;
	}
}
echo wp_json_encode(
	array(
		'users'        => count( $ids ),
		'equal'        => ! $differing,
		'differing'    => $differing,
		'meta_queries' => $meta_queries,
	)
), "\n";
