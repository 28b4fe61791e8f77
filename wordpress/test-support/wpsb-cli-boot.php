<?php
/**
 * TEST SITES ONLY: what the command-line test scripts share (wpsb-query-count.php,
 * wpsb-meta-prime-check.php), required at their top level with $argv[1] the site's directory and
 * $argv[2] its port: loads WordPress as a request to 127.0.0.1:PORT would (in the global scope,
 * as wp-config.php expects), keeping every query (SAVEQUERIES), sending no mail, as the
 * administrator (user 1). Not a must-use plugin.
 *
 * @package wp-sync-bridge
 */

define( 'SAVEQUERIES', true );
$_SERVER['HTTP_HOST']       = '127.0.0.1:' . $argv[2];
$_SERVER['REQUEST_URI']     = '/';
$_SERVER['SERVER_PROTOCOL'] = 'HTTP/1.1';
$_SERVER['REQUEST_METHOD']  = 'GET';
require $argv[1] . '/wp-load.php';
add_filter( 'pre_wp_mail', '__return_false', 1 );
wp_set_current_user( 1 );
