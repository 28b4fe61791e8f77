<?php
/**
 * Plugin Name: WP Sync Bridge test own hasher
 * Description: TEST SITES ONLY. Replaces the pluggable wp_hash_password() with a plugin's own (phpass at 2^10 rounds: "$P$D..." where core writes "$P$B..." on 6.1 and "$wp$2y$..." on 6.8), as security plugins do, so tests can see that the companion plugin then hashes a random password with it rather than storing its unusable value. Core's wp_check_password() still verifies these hashes.
 * Version: 1.0.0
 *
 * Linked into the test site's wp-content/mu-plugins/ by tests/plugin_actors.py (own_hasher) for
 * the length of one test. Never install it on a real site.
 *
 * @package wp-sync-bridge
 */

defined( 'ABSPATH' ) || exit;

if ( ! function_exists( 'wp_hash_password' ) ) {
	/**
	 * A plugin's own password hash.
	 *
	 * @param string $password Plain text.
	 * @return string
	 */
	function wp_hash_password( $password ) {
		require_once ABSPATH . WPINC . '/class-phpass.php';
		return ( new PasswordHash( 10, true ) )->HashPassword( trim( $password ) );
	}
}
