<?php
/**
 * Plugin Name: WP Sync Bridge test meta journal
 * Description: TEST SITES ONLY. Every write that changes the user meta "journal_seq" also adds a row "journal_seq_log" with the new value, in the same transaction, so tests can read the order in which WordPress saw a user's values (umeta_id order).
 * Version: 1.0.0
 *
 * Linked into the test site's wp-content/mu-plugins/ by tests/plugin_actors.py (link_journal_plugin)
 * for the multi-instance test. Never install it on a real site.
 *
 * @package wp-sync-bridge
 */

defined( 'ABSPATH' ) || exit;

/**
 * added_user_meta / updated_user_meta: journal a changed "journal_seq". WordPress fires neither
 * for a write of the value already stored, so a row is one change, in commit order per user.
 *
 * @param int    $meta_id  Meta ID.
 * @param int    $user_id  User ID.
 * @param string $meta_key Meta key.
 * @param mixed  $value    Value.
 * @return void
 */
function wpsb_test_meta_journal( $meta_id, $user_id, $meta_key, $value ) {
	if ( 'journal_seq' === $meta_key ) {
		add_metadata( 'user', (int) $user_id, 'journal_seq_log', wp_slash( (string) $value ) );
	}
}
add_action( 'added_user_meta', 'wpsb_test_meta_journal', 10, 4 );
add_action( 'updated_user_meta', 'wpsb_test_meta_journal', 10, 4 );
