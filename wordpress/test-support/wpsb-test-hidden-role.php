<?php
/**
 * Plugin Name: WP Sync Bridge test: a role outside editable_roles
 * Description: TEST SITES ONLY. Removes the roles whose slug starts with "wpsb_t_hidden" from get_editable_roles(), as membership and shop plugins restrict the roles a manager may assign, so the tests can show the plugin honours editable_roles.
 * Version: 1.0.0
 *
 * Linked into the test site's wp-content/mu-plugins/ by tests/plugin_actors.py for the security
 * tests. Never install it on a real site.
 *
 * @package wp-sync-bridge
 */

defined( 'ABSPATH' ) || exit;

add_filter(
	'editable_roles',
	static function ( $roles ) {
		foreach ( array_keys( (array) $roles ) as $slug ) {
			if ( 0 === strpos( (string) $slug, 'wpsb_t_hidden' ) ) {
				unset( $roles[ $slug ] );
			}
		}
		return $roles;
	}
);
