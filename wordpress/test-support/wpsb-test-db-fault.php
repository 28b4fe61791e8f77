<?php
/**
 * Plugin Name: WP Sync Bridge test database fault
 * Description: TEST SITES ONLY. Writing any user meta (a core field such as last_name included) with the value "db-error" runs a failing query, so tests can see what a batch upsert does after a database error inside its transaction; the option "wpsb_test_hide_features" hides the plugin's optional features from status, as an older plugin would.
 * Version: 1.0.0
 *
 * Linked into the test site's wp-content/mu-plugins/ by tests/plugin_actors.py (link_fault_plugin).
 *
 * @package wp-sync-bridge
 */

defined( 'ABSPATH' ) || exit;

/**
 * added_user_meta / updated_user_meta: a query MariaDB refuses when the probe value db-error is
 * written (under any key: fault_probe, or a field wp_update_user() writes, such as last_name); a
 * pause of N seconds when the value sleep-N is.
 *
 * @param int    $meta_id  Meta ID.
 * @param int    $user_id  User ID.
 * @param string $meta_key Meta key.
 * @param mixed  $value    Value.
 * @return void
 */
function wpsb_test_db_fault( $meta_id, $user_id, $meta_key, $value ) {
	global $wpdb;
	if ( is_string( $value ) && preg_match( '/^sleep-([0-9])$/', $value, $m ) ) {
		sleep( (int) $m[1] ); // A slow item: what the batch holds meanwhile can be looked at.
	}
	if ( 'db-error' === $value ) {
		$suppress = $wpdb->suppress_errors( true );
		$wpdb->query( "SELECT wpsb_no_such_column FROM {$wpdb->users} LIMIT 1" ); // phpcs:ignore
		$wpdb->suppress_errors( $suppress );
	}
}
add_action( 'added_user_meta', 'wpsb_test_db_fault', 10, 4 );
add_action( 'updated_user_meta', 'wpsb_test_db_fault', 10, 4 );

/**
 * wpsb_features filter: none while the option wpsb_test_hide_features is set.
 *
 * @param string[] $features Features.
 * @return string[]
 */
function wpsb_test_hide_features( $features ) {
	return get_option( 'wpsb_test_hide_features' ) ? array() : $features;
}
add_filter( 'wpsb_features', 'wpsb_test_hide_features' );

/**
 * rest_post_dispatch: the header X-WPSB-Test-Core-Routes says whether WordPress core's REST
 * routes were registered for this request (yes or no), so tests can see the plugin's lean REST.
 *
 * @param WP_REST_Response $response Response.
 * @param WP_REST_Server   $server   Server.
 * @return WP_REST_Response
 */
function wpsb_test_core_routes_header( $response, $server ) {
	if ( $response instanceof WP_REST_Response ) {
		$response->header( 'X-WPSB-Test-Core-Routes', isset( $server->get_routes()['/wp/v2/users'] ) ? 'yes' : 'no' );
	}
	return $response;
}
add_filter( 'rest_post_dispatch', 'wpsb_test_core_routes_header', 10, 2 );
