<?php
/**
 * TEST SITES ONLY, command line only: set up roles, users and application passwords on the local
 * test site for the plugin's security tests (tests/plugin_actors.py), without wp-cli.
 *
 *   php wpsb-test-setup.php SITE_DIR PORT < operations.json
 *
 * Reads a JSON list of operations, prints a JSON list with one result per operation:
 *
 *   {"op": "role", "slug": "...", "caps": ["read", ...]}        (re)create a role -> true
 *   {"op": "role_caps", "slug": "..."}                           -> {"cap": true, ...} or null
 *   {"op": "add_role_cap", "slug": "...", "cap": "..."}          -> true
 *   {"op": "user", "login", "email", "password", "role", "caps": [...], "meta": {...},
 *    "app_password": true}                                       -> {"id": N, "app_password": "..."}
 *   {"op": "option", "name": "...", "value": ...}                (null deletes it) -> true
 *
 * @package wp-sync-bridge
 */

if ( 'cli' !== PHP_SAPI || $argc < 3 ) {
	fwrite( STDERR, "usage: php wpsb-test-setup.php SITE_DIR PORT < operations.json\n" );
	exit( 2 );
}

$_SERVER['HTTP_HOST']       = '127.0.0.1:' . $argv[2];
$_SERVER['REQUEST_URI']     = '/';
$_SERVER['SERVER_PROTOCOL'] = 'HTTP/1.1';
$_SERVER['REQUEST_METHOD']  = 'GET';
require $argv[1] . '/wp-load.php';
require_once ABSPATH . 'wp-admin/includes/user.php';
// Set-up mails (e.g. a new-user notice) must not count as the tests' mails.
add_filter( 'pre_wp_mail', '__return_false', 1 );

/**
 * Run one operation.
 *
 * @param array $op Operation.
 * @return mixed Result.
 */
function wpsb_test_setup_run( array $op ) {
	switch ( $op['op'] ) {
		case 'role':
			remove_role( $op['slug'] );
			add_role( $op['slug'], $op['name'] ?? $op['slug'], array_fill_keys( $op['caps'], true ) );
			return true;
		case 'role_caps':
			$role = get_role( $op['slug'] );
			return $role ? (object) $role->capabilities : null;
		case 'add_role_cap':
			get_role( $op['slug'] )->add_cap( $op['cap'] );
			return true;
		case 'user':
			$id = wp_insert_user(
				wp_slash(
					array(
						'user_login' => $op['login'],
						'user_email' => $op['email'],
						'user_pass'  => $op['password'],
						'role'       => $op['role'],
					)
				)
			);
			if ( is_wp_error( $id ) ) {
				throw new RuntimeException( $id->get_error_message() );
			}
			$user = new WP_User( $id );
			foreach ( $op['caps'] ?? array() as $cap ) {
				$user->add_cap( $cap );
			}
			foreach ( $op['denied_caps'] ?? array() as $cap ) {
				$user->add_cap( $cap, false ); // A role named here still lends its capabilities (core).
			}
			foreach ( $op['meta'] ?? array() as $key => $value ) {
				update_user_meta( $id, $key, wp_slash( $value ) );
			}
			$out = array( 'id' => $id );
			if ( ! empty( $op['app_password'] ) ) {
				$created = WP_Application_Passwords::create_new_application_password( $id, array( 'name' => 'tests' ) );
				if ( is_wp_error( $created ) ) {
					throw new RuntimeException( $created->get_error_message() );
				}
				$out['app_password'] = $created[0];
			}
			return $out;
		case 'user_meta':
			return (bool) update_user_meta( (int) $op['id'], $op['key'], wp_slash( $op['value'] ) );
		case 'option':
			if ( null === $op['value'] ) {
				delete_option( $op['name'] );
			} else {
				update_option( $op['name'], $op['value'] );
			}
			return true;
	}
	throw new RuntimeException( 'unknown operation ' . $op['op'] );
}

$results = array();
foreach ( json_decode( stream_get_contents( STDIN ), true ) as $op ) {
	$results[] = wpsb_test_setup_run( $op );
}
echo wp_json_encode( $results );
