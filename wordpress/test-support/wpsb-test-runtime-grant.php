<?php
/**
 * Plugin Name: WP Sync Bridge test: a capability granted at run time
 * Description: TEST SITES ONLY. edit_users granted at run time to the users wpsb_test_runtime_grants lists.
 * Version: 1.0.0
 *
 * As membership plugins grant capabilities per user at run time (user_has_cap): the tests show
 * such a user counts as privileged however alike their stored capabilities are.
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
