<?php
/**
 * Plugin Name: WP Sync Bridge test mail capture
 * Description: TEST SITES ONLY. Sends no mail: appends each message as one JSON line to the file named by the WPSB_MAIL_LOG constant, so tests can count welcome mails.
 * Version: 1.0.0
 *
 * Installed by scripts/wordpress-stack into the local test site's wp-content/mu-plugins/.
 * Never install it on a real site: it swallows every mail.
 *
 * @package wp-sync-bridge
 */

defined( 'ABSPATH' ) || exit;

/**
 * Short-circuit wp_mail(): log the message and report it as sent.
 *
 * @param null|bool $return Null unless an earlier filter already decided.
 * @param array     $atts   to, subject, message, headers, attachments.
 * @return null|bool
 */
function wpsb_mail_capture( $return, $atts ) {
	if ( null !== $return || ! defined( 'WPSB_MAIL_LOG' ) || '' === WPSB_MAIL_LOG ) {
		return $return;
	}
	$to = $atts['to'] ?? array();
	if ( is_string( $to ) ) {
		$to = explode( ',', $to ); // wp_mail() accepts a comma-separated list.
	}
	$record = array(
		'to'      => array_values( array_map( 'trim', (array) $to ) ),
		'subject' => (string) ( $atts['subject'] ?? '' ),
		'message' => (string) ( $atts['message'] ?? '' ),
		'headers' => $atts['headers'] ?? array(),
		'time'    => microtime( true ),
	);
	$line = wp_json_encode( $record, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE ) . "\n";
	// One write() with O_APPEND: lines from concurrent PHP workers do not interleave.
	// phpcs:ignore WordPress.WP.AlternativeFunctions.file_system_read_file_put_contents
	if ( false === file_put_contents( WPSB_MAIL_LOG, $line, FILE_APPEND | LOCK_EX ) ) {
		return false;
	}
	return true;
}
add_filter( 'pre_wp_mail', 'wpsb_mail_capture', 10, 2 );
