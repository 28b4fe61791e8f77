<?php
/**
 * Plugin Name: WP Sync Bridge test: a capability granted at run time
 * Description: TEST SITES ONLY. A user_has_cap filter granting edit_users to the users whose IDs the option wpsb_test_runtime_grants lists, as membership plugins grant capabilities per user at run time, so the tests can show such a user counts as privileged however alike their stored capabilities are.
 * Version: 1.0.0
 *
 * Linked into the test site's wp-content/mu-plugins/ by tests/plugin_actors.py (runtime_grant())
 * while a test runs. Never install it on a real site.
 *
 * @package wp-sync-bridge
 */

defined( 'ABSPATH' ) || exit;

add_filter(
	'user_has_cap',
	static function ( $allcaps, $caps, $args, $user ) {
		$ids = array_map( 'intval', (array) get_option( 'wpsb_test_runtime_grants', array() ) );
		if ( $user instanceof WP_User && in_array( (int) $user->ID, $ids, true ) ) {
			$allcaps['edit_users'] = true;
		}
		return $allcaps;
	},
	10,
	4
);
