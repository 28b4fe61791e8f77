<?php
/**
 * Plugin Name: WP Sync Bridge companion
 * Description: User find-or-create for the wp-sync-bridge daemon, over REST (wp-sync-bridge/v1) and XML-RPC (wpsb.*). Serialises account creation per email so concurrent webhooks never create duplicate users.
 * Version: 1.0.0
 * Requires at least: 6.0
 * Requires PHP: 7.4
 *
 * Install as a must-use plugin: copy this file to wp-content/mu-plugins/.
 * The contract (routes, methods, arguments, answers, error codes) is in wordpress/README.md
 * of the wp-sync-bridge repository.
 *
 * Layout: each operation is one function taking an array of arguments and returning
 * array|WP_Error (wpsb_op_*). The REST and XML-RPC adaptors only translate arguments in
 * and answers/errors out.
 *
 * @package wp-sync-bridge
 */

defined( 'ABSPATH' ) || exit;

define( 'WPSB_PLUGIN_VERSION', '1.0.0' );
define( 'WPSB_API_VERSION', 1 );
define( 'WPSB_REST_NAMESPACE', 'wp-sync-bridge/v1' );
define( 'WPSB_REQUEST_ID_META', '_wpsb_request_id' );
define( 'WPSB_LOCK_TIMEOUT_S', 10 );
define( 'WPSB_SCHEMA_VERSION', 1 );

/*
 * ---------------------------------------------------------------------------------------------
 * Operation table
 * ---------------------------------------------------------------------------------------------
 */

/**
 * The operations this plugin offers, with their REST route and XML-RPC method name.
 *
 * @return array<string, array{callback: string, method: string, route: string, xmlrpc: string, xmlrpc_adaptor: string}>
 */
function wpsb_operations() {
	return array(
		'status'     => array(
			'callback'       => 'wpsb_op_status',
			'method'         => 'GET',
			'route'          => '/status',
			'xmlrpc'         => 'wpsb.status',
			'xmlrpc_adaptor' => 'wpsb_xmlrpc_status',
		),
		'get_roles'  => array(
			'callback'       => 'wpsb_op_get_roles',
			'method'         => 'GET',
			'route'          => '/roles',
			'xmlrpc'         => 'wpsb.getRoles',
			'xmlrpc_adaptor' => 'wpsb_xmlrpc_get_roles',
		),
		'lookup'     => array(
			'callback'       => 'wpsb_op_lookup_user',
			'method'         => 'GET',
			'route'          => '/users/lookup',
			'xmlrpc'         => 'wpsb.lookupUser',
			'xmlrpc_adaptor' => 'wpsb_xmlrpc_lookup_user',
		),
		'upsert'     => array(
			'callback'       => 'wpsb_op_upsert_user',
			'method'         => 'POST',
			'route'          => '/users/upsert',
			'xmlrpc'         => 'wpsb.upsertUser',
			'xmlrpc_adaptor' => 'wpsb_xmlrpc_upsert_user',
		),
		'delete'     => array(
			'callback'       => 'wpsb_op_delete_user',
			'method'         => 'POST',
			'route'          => '/users/delete',
			'xmlrpc'         => 'wpsb.deleteUser',
			'xmlrpc_adaptor' => 'wpsb_xmlrpc_delete_user',
		),
	);
}

/**
 * Run one operation by its key. Both adaptors go through here.
 *
 * @param string $op   Key of wpsb_operations().
 * @param mixed  $args Arguments (an associative array; anything else counts as none).
 * @return array|WP_Error
 */
function wpsb_dispatch( $op, $args ) {
	$ops = wpsb_operations();
	if ( ! isset( $ops[ $op ] ) ) {
		return new WP_Error( 'wpsb_unknown_operation', 'Unknown operation.', array( 'status' => 404 ) );
	}
	if ( ! is_array( $args ) ) {
		$args = array();
	}
	return call_user_func( $ops[ $op ]['callback'], $args );
}

/*
 * ---------------------------------------------------------------------------------------------
 * Errors and authorisation
 * ---------------------------------------------------------------------------------------------
 */

/**
 * A 400 error for a bad argument, naming the field.
 *
 * @param string $field   Argument name.
 * @param string $message What is wrong with it.
 * @return WP_Error
 */
function wpsb_invalid_arg( $field, $message ) {
	return new WP_Error(
		'wpsb_invalid_args',
		sprintf( 'Invalid argument "%s": %s', $field, $message ),
		array(
			'status' => 400,
			'field'  => $field,
		)
	);
}

/**
 * Check that the current user is logged in and holds every capability.
 *
 * @param string[] $caps Capabilities (meta capabilities such as edit_user need $object_id).
 * @param int|null $object_id Object for meta capabilities.
 * @return true|WP_Error 401 wpsb_not_logged_in, or 403 wpsb_forbidden naming the capability.
 */
function wpsb_authorize( array $caps, $object_id = null ) {
	if ( ! is_user_logged_in() ) {
		return new WP_Error( 'wpsb_not_logged_in', 'Authentication required.', array( 'status' => 401 ) );
	}
	foreach ( $caps as $cap ) {
		$ok = null === $object_id ? current_user_can( $cap ) : current_user_can( $cap, $object_id );
		if ( ! $ok ) {
			return new WP_Error(
				'wpsb_forbidden',
				sprintf( 'The authenticated user lacks the "%s" capability.', $cap ),
				array( 'status' => 403 )
			);
		}
	}
	return true;
}

/*
 * ---------------------------------------------------------------------------------------------
 * Argument readers (shared by REST and XML-RPC: query strings give strings, JSON and XML-RPC
 * give typed values)
 * ---------------------------------------------------------------------------------------------
 */

/**
 * Read an optional string argument; absent or null gives $default.
 *
 * @param array       $args    Arguments.
 * @param string      $key     Argument name.
 * @param string|null $default Value when absent.
 * @return string|null|WP_Error
 */
function wpsb_arg_string( array $args, $key, $default = null ) {
	if ( ! array_key_exists( $key, $args ) || null === $args[ $key ] ) {
		return $default;
	}
	$value = $args[ $key ];
	if ( is_int( $value ) || is_float( $value ) ) {
		return (string) $value;
	}
	if ( ! is_string( $value ) ) {
		return wpsb_invalid_arg( $key, 'must be a string.' );
	}
	return $value;
}

/**
 * Read an optional boolean argument: true/false, 1/0, or the strings "true"/"false"/"1"/"0"/"yes"/"no"/"".
 *
 * @param array  $args    Arguments.
 * @param string $key     Argument name.
 * @param bool   $default Value when absent or null.
 * @return bool|WP_Error
 */
function wpsb_arg_bool( array $args, $key, $default ) {
	if ( ! array_key_exists( $key, $args ) || null === $args[ $key ] ) {
		return $default;
	}
	$value = $args[ $key ];
	if ( is_bool( $value ) ) {
		return $value;
	}
	if ( is_int( $value ) && ( 0 === $value || 1 === $value ) ) {
		return 1 === $value;
	}
	if ( is_string( $value ) ) {
		$value = strtolower( trim( $value ) );
		if ( in_array( $value, array( 'true', '1', 'yes', 'on' ), true ) ) {
			return true;
		}
		if ( in_array( $value, array( 'false', '0', 'no', 'off', '' ), true ) ) {
			return false;
		}
	}
	return wpsb_invalid_arg( $key, 'must be a boolean.' );
}

/**
 * Read an optional list of strings; a string is split on commas (for query strings).
 *
 * @param array  $args Arguments.
 * @param string $key  Argument name.
 * @return string[]|null|WP_Error Null when absent.
 */
function wpsb_arg_string_list( array $args, $key ) {
	if ( ! array_key_exists( $key, $args ) || null === $args[ $key ] ) {
		return null;
	}
	$value = $args[ $key ];
	if ( is_string( $value ) ) {
		$value = '' === trim( $value ) ? array() : array_map( 'trim', explode( ',', $value ) );
	}
	if ( ! is_array( $value ) || ! wp_is_numeric_array( $value ) ) {
		return wpsb_invalid_arg( $key, 'must be a list of strings.' );
	}
	$out = array();
	foreach ( $value as $item ) {
		if ( is_int( $item ) || is_float( $item ) ) {
			$item = (string) $item;
		}
		if ( ! is_string( $item ) ) {
			return wpsb_invalid_arg( $key, 'must be a list of strings.' );
		}
		if ( ! in_array( $item, $out, true ) ) {
			$out[] = $item;
		}
	}
	return $out;
}

/**
 * Check a user meta key given by the caller: non-empty, and not one that controls
 * privileges or sessions (writing those would bypass the role policy).
 *
 * @param string $field Argument name, for the error.
 * @param mixed  $key   The meta key.
 * @return true|WP_Error
 */
function wpsb_check_meta_key( $field, $key ) {
	global $wpdb;
	if ( ! is_string( $key ) || '' === trim( $key ) ) {
		return wpsb_invalid_arg( $field, 'meta keys must be non-empty strings.' );
	}
	$prefix = preg_quote( $wpdb->base_prefix, '/' );
	$denied = '/^' . $prefix . '(\d+_)?(capabilities|user_level)$/';
	$fixed  = array( 'session_tokens', '_application_passwords', WPSB_REQUEST_ID_META );
	if ( preg_match( $denied, $key ) || in_array( $key, $fixed, true ) ) {
		return wpsb_invalid_arg( $field, sprintf( 'the meta key "%s" may not be written through this API.', $key ) );
	}
	return true;
}

/**
 * Normalise an email for comparisons and lock names: trimmed, ASCII lower-case.
 *
 * @param string $email Email address.
 * @return string
 */
function wpsb_normalize_email( $email ) {
	return strtolower( trim( $email ) );
}

/*
 * ---------------------------------------------------------------------------------------------
 * Finding users
 * ---------------------------------------------------------------------------------------------
 */

/**
 * ID of the user whose email equals $email ignoring case (exact otherwise: no substring,
 * no accent folding, no trailing-space padding). Lowest ID wins if duplicates exist.
 *
 * @param string $email Email address.
 * @return int 0 when none.
 */
function wpsb_find_user_id_by_email( $email ) {
	global $wpdb;
	$email = trim( $email );
	if ( '' === $email ) {
		return 0;
	}
	// The first condition uses the user_email index (case-insensitive collation); the second
	// makes the match exact apart from case.
	$sql = $wpdb->prepare(
		// MIN() rather than ORDER BY ID LIMIT 1, which can make MariaDB walk the primary key.
		"SELECT MIN(ID) FROM {$wpdb->users} WHERE user_email = %s AND BINARY LOWER(user_email) = BINARY LOWER(%s)",
		$email,
		$email
	);
	return (int) $wpdb->get_var( $sql ); // phpcs:ignore WordPress.DB.PreparedSQL.NotPrepared
}

/**
 * ID of the user whose meta $key equals $value exactly. Lowest ID wins if several match.
 *
 * @param string $key   Meta key, e.g. customerly_contact_id.
 * @param string $value Contact ID.
 * @return int 0 when none.
 */
function wpsb_find_user_id_by_meta( $key, $value ) {
	global $wpdb;
	if ( wpsb_contact_index_ready() && wpsb_is_contact_key( $key ) && mb_strlen( $value ) <= 191 ) {
		$table = wpsb_contacts_table();
		$sql   = $wpdb->prepare(
			"SELECT MIN(c.user_id) FROM {$table} c JOIN {$wpdb->users} u ON u.ID = c.user_id WHERE c.meta_key = %s AND c.contact_id = %s",
			$key,
			$value
		);
		return (int) $wpdb->get_var( $sql ); // phpcs:ignore WordPress.DB.PreparedSQL.NotPrepared
	}
	$sql = $wpdb->prepare(
		// MIN() rather than ORDER BY ... LIMIT 1: with ORDER BY, MariaDB walks the user_id index
		// over the whole usermeta table on a miss; MIN() keeps it on the meta_key index.
		"SELECT MIN(m.user_id) FROM {$wpdb->usermeta} m JOIN {$wpdb->users} u ON u.ID = m.user_id WHERE m.meta_key = %s AND m.meta_value = BINARY %s",
		$key,
		$value
	);
	return (int) $wpdb->get_var( $sql ); // phpcs:ignore WordPress.DB.PreparedSQL.NotPrepared
}

/*
 * ---------------------------------------------------------------------------------------------
 * Contact index: (meta key, contact ID) → user
 *
 * wp_usermeta has no index on meta_value, so finding a user by CRM contact ID scans every row
 * with that meta key: 3 ms at 2,600 contacts here, and growing with the site. This table mirrors
 * the user meta whose key ends in "_contact_id" (the bridge's and WP Fusion's naming), kept in
 * step by the user-meta hooks and filled from existing meta when it is created, so the lookup is
 * one primary-key probe. Meta written with raw SQL behind WordPress's back is not seen.
 * ---------------------------------------------------------------------------------------------
 */

/**
 * Name of the contact index table.
 *
 * @return string
 */
function wpsb_contacts_table() {
	global $wpdb;
	return $wpdb->prefix . 'wpsb_contacts';
}

/**
 * Whether a meta key holds a CRM contact ID (and fits the index).
 *
 * @param mixed $key Meta key.
 * @return bool
 */
function wpsb_is_contact_key( $key ) {
	return is_string( $key ) && strlen( $key ) <= 191 && '_contact_id' === substr( $key, -11 );
}

/**
 * Whether the contact index exists (created by wpsb_install_contact_index()).
 *
 * @return bool
 */
function wpsb_contact_index_ready() {
	return (int) get_option( 'wpsb_schema_version', 0 ) >= WPSB_SCHEMA_VERSION;
}

/**
 * Create the contact index and fill it from existing meta, once (idempotent, safe to race).
 *
 * @return void
 */
function wpsb_install_contact_index() {
	global $wpdb;
	if ( wpsb_contact_index_ready() ) {
		return;
	}
	$table = wpsb_contacts_table();
	$wpdb->query(
		"CREATE TABLE IF NOT EXISTS {$table} (meta_key VARCHAR(191) NOT NULL, contact_id VARCHAR(191) NOT NULL, user_id BIGINT UNSIGNED NOT NULL, PRIMARY KEY (meta_key, contact_id, user_id), KEY user_id (user_id)) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin" // phpcs:ignore WordPress.DB.PreparedSQL.InterpolatedNotPrepared
	);
	$wpdb->query(
		"INSERT IGNORE INTO {$table} (meta_key, contact_id, user_id) SELECT meta_key, meta_value, user_id FROM {$wpdb->usermeta} WHERE meta_key LIKE '%\\_contact\\_id' AND CHAR_LENGTH(meta_value) BETWEEN 1 AND 191" // phpcs:ignore WordPress.DB.PreparedSQL.InterpolatedNotPrepared
	);
	update_option( 'wpsb_schema_version', WPSB_SCHEMA_VERSION, true );
}

/**
 * Re-index one user's contact IDs under one key from their current meta.
 *
 * @param int    $user_id User ID.
 * @param string $key     Contact-ID meta key.
 * @return void
 */
function wpsb_reindex_contact( $user_id, $key ) {
	global $wpdb;
	$table = wpsb_contacts_table();
	$wpdb->delete(
		$table,
		array(
			'meta_key' => $key, // phpcs:ignore WordPress.DB.SlowDBQuery.slow_db_query_meta_key
			'user_id'  => $user_id,
		)
	);
	foreach ( get_user_meta( $user_id, $key, false ) as $value ) {
		if ( is_scalar( $value ) && '' !== (string) $value && mb_strlen( (string) $value ) <= 191 ) {
			$wpdb->query( $wpdb->prepare( "INSERT IGNORE INTO {$table} (meta_key, contact_id, user_id) VALUES (%s, %s, %d)", $key, (string) $value, $user_id ) ); // phpcs:ignore WordPress.DB.PreparedSQL.InterpolatedNotPrepared
		}
	}
}

/**
 * Keep the index in step with added, updated and deleted contact-ID meta.
 *
 * @param mixed  $meta_id  Meta ID(s).
 * @param int    $user_id  User ID.
 * @param string $meta_key Meta key.
 * @return void
 */
function wpsb_track_contact_meta( $meta_id, $user_id, $meta_key ) {
	if ( wpsb_contact_index_ready() && wpsb_is_contact_key( $meta_key ) ) {
		wpsb_reindex_contact( (int) $user_id, $meta_key );
	}
}

/**
 * Forget a deleted user's contact IDs.
 *
 * @param int $user_id User ID.
 * @return void
 */
function wpsb_forget_contacts( $user_id ) {
	global $wpdb;
	if ( wpsb_contact_index_ready() ) {
		$wpdb->delete( wpsb_contacts_table(), array( 'user_id' => (int) $user_id ) );
	}
}

add_action( 'init', 'wpsb_install_contact_index' );
add_action( 'added_user_meta', 'wpsb_track_contact_meta', 10, 3 );
add_action( 'updated_user_meta', 'wpsb_track_contact_meta', 10, 3 );
add_action( 'deleted_user_meta', 'wpsb_track_contact_meta', 10, 3 );
add_action( 'deleted_user', 'wpsb_forget_contacts' );

/**
 * Find a user: by contact ID meta first (when both are given), then by exact email.
 *
 * @param string|null $email          Email address.
 * @param string|null $contact_id     Contact ID.
 * @param string|null $contact_id_key Meta key holding the contact ID.
 * @return array{user: WP_User|null, matched_by: string|null}
 */
function wpsb_find_user( $email, $contact_id, $contact_id_key ) {
	if ( null !== $contact_id && '' !== $contact_id && null !== $contact_id_key ) {
		$id = wpsb_find_user_id_by_meta( $contact_id_key, $contact_id );
		if ( $id ) {
			return array(
				'user'       => get_userdata( $id ),
				'matched_by' => 'contact_id',
			);
		}
	}
	if ( null !== $email ) {
		$id = wpsb_find_user_id_by_email( $email );
		if ( $id ) {
			return array(
				'user'       => get_userdata( $id ),
				'matched_by' => 'email',
			);
		}
	}
	return array(
		'user'       => null,
		'matched_by' => null,
	);
}

/**
 * The user as the API shows it.
 *
 * @param WP_User     $user           User.
 * @param string[]    $meta_keys      Meta keys to include.
 * @param string|null $tags_key       Meta key holding the tag list.
 * @param string|null $contact_id_key Meta key holding the contact ID.
 * @return array
 */
function wpsb_user_payload( WP_User $user, array $meta_keys, $tags_key, $contact_id_key ) {
	$meta = array();
	foreach ( $meta_keys as $key ) {
		$meta[ $key ] = metadata_exists( 'user', $user->ID, $key ) ? get_user_meta( $user->ID, $key, true ) : null;
	}
	$contact_id = null;
	if ( null !== $contact_id_key && metadata_exists( 'user', $user->ID, $contact_id_key ) ) {
		$contact_id = (string) get_user_meta( $user->ID, $contact_id_key, true );
	}
	return array(
		'id'           => (int) $user->ID,
		'login'        => $user->user_login,
		'email'        => $user->user_email,
		'first_name'   => (string) $user->first_name,
		'last_name'    => (string) $user->last_name,
		'display_name' => $user->display_name,
		'roles'        => array_values( $user->roles ),
		'meta'         => (object) $meta,
		'tags'         => null === $tags_key ? array() : wpsb_read_tags( $user->ID, $tags_key ),
		'contact_id'   => $contact_id,
	);
}

/**
 * The tag list stored under $tags_key ([] when none or not a list).
 *
 * @param int    $user_id  User ID.
 * @param string $tags_key Meta key.
 * @return string[]
 */
function wpsb_read_tags( $user_id, $tags_key ) {
	$tags = get_user_meta( $user_id, $tags_key, true );
	return is_array( $tags ) ? array_values( array_map( 'strval', $tags ) ) : array();
}

/*
 * ---------------------------------------------------------------------------------------------
 * Roles
 * ---------------------------------------------------------------------------------------------
 */

/**
 * Turn a role slug or display name (case-insensitive) into a slug known to the site.
 *
 * @param string $role Slug or display name.
 * @return string|null Null when the site has no such role.
 */
function wpsb_role_slug( $role ) {
	$names = wp_roles()->get_names();
	$role  = trim( $role );
	if ( isset( $names[ $role ] ) ) {
		return $role;
	}
	$wanted = strtolower( $role );
	foreach ( $names as $slug => $name ) {
		if ( strtolower( $slug ) === $wanted || strtolower( $name ) === $wanted ) {
			return $slug;
		}
	}
	return null;
}

/**
 * Apply the role policy: slug or title accepted; administrator never granted; unknown roles
 * fall back to the default role. Warnings are appended to $warnings.
 *
 * @param string|null $role         Requested role (null: the default role).
 * @param string      $default_role Role to use instead (slug or title).
 * @param string[]    $warnings     Collects warnings.
 * @return string Role slug.
 */
function wpsb_resolve_role( $role, $default_role, array &$warnings ) {
	$default = wpsb_role_slug( $default_role );
	if ( null === $default || 'administrator' === $default ) {
		$warnings[] = sprintf( 'default_role "%s" is not usable; using "subscriber".', $default_role );
		$default    = 'subscriber';
	}
	if ( null === $role || '' === trim( $role ) ) {
		return $default;
	}
	$slug = wpsb_role_slug( $role );
	if ( null === $slug ) {
		$warnings[] = sprintf( 'role "%s" does not exist on this site; using "%s".', $role, $default );
		return $default;
	}
	if ( 'administrator' === $slug ) {
		$warnings[] = sprintf( 'role "administrator" is never granted; using "%s".', $default );
		return $default;
	}
	return $slug;
}

/**
 * The user's primary role ('' when none).
 *
 * @param WP_User $user User.
 * @return string
 */
function wpsb_primary_role( WP_User $user ) {
	$roles = array_values( $user->roles );
	return $roles ? (string) $roles[0] : '';
}

/*
 * ---------------------------------------------------------------------------------------------
 * Meta comparison (so an identical call writes nothing)
 * ---------------------------------------------------------------------------------------------
 */

/**
 * A scalar as WordPress stores it in a meta row.
 *
 * @param mixed $value Scalar.
 * @return string
 */
function wpsb_stored_scalar( $value ) {
	if ( true === $value ) {
		return '1';
	}
	if ( false === $value ) {
		return '';
	}
	return (string) $value;
}

/**
 * Whether writing $new under $key would leave the user's meta as it is.
 *
 * @param int    $user_id User ID.
 * @param string $key     Meta key.
 * @param mixed  $new     Scalar or array.
 * @return bool
 */
function wpsb_meta_unchanged( $user_id, $key, $new ) {
	if ( ! metadata_exists( 'user', $user_id, $key ) ) {
		return false;
	}
	$all = get_user_meta( $user_id, $key, false );
	if ( 1 !== count( $all ) ) {
		return false; // Several rows: writing collapses them into one.
	}
	$old = $all[0];
	if ( is_array( $new ) ) {
		return $old === $new;
	}
	return is_scalar( $old ) && wpsb_stored_scalar( $old ) === wpsb_stored_scalar( $new );
}

/**
 * Write one meta value unless it is already stored; report it as changed.
 *
 * @param int      $user_id User ID.
 * @param string   $key     Meta key.
 * @param mixed    $value   Scalar or array.
 * @param string   $label   Name to report in $changed.
 * @param string[] $changed Collects changed field names.
 * @return void
 */
function wpsb_write_meta( $user_id, $key, $value, $label, array &$changed ) {
	if ( wpsb_meta_unchanged( $user_id, $key, $value ) ) {
		return;
	}
	// update_user_meta() unslashes its value, so slash it first to keep backslashes.
	update_user_meta( $user_id, $key, wp_slash( $value ) );
	$changed[] = $label;
}

/*
 * ---------------------------------------------------------------------------------------------
 * Per-email lock (MariaDB/MySQL GET_LOCK: works across PHP workers and web servers)
 * ---------------------------------------------------------------------------------------------
 */

/**
 * Take the named lock for an email, waiting up to WPSB_LOCK_TIMEOUT_S seconds.
 *
 * @param string $email Email address (normalised inside SQL).
 * @return true|WP_Error 503 wpsb_lock_timeout.
 */
function wpsb_acquire_lock( $email ) {
	global $wpdb;
	$got = $wpdb->get_var(
		$wpdb->prepare(
			"SELECT GET_LOCK(CONCAT('wpsb:', MD5(%s)), %d)",
			wpsb_normalize_email( $email ),
			WPSB_LOCK_TIMEOUT_S
		)
	);
	if ( '1' !== (string) $got ) {
		return new WP_Error(
			'wpsb_lock_timeout',
			'Another request for the same email is still running; try again.',
			array( 'status' => 503 )
		);
	}
	return true;
}

/**
 * Release the named lock for an email.
 *
 * @param string $email Email address.
 * @return void
 */
function wpsb_release_lock( $email ) {
	global $wpdb;
	$wpdb->query(
		$wpdb->prepare( "SELECT RELEASE_LOCK(CONCAT('wpsb:', MD5(%s)))", wpsb_normalize_email( $email ) )
	);
}

/*
 * ---------------------------------------------------------------------------------------------
 * Operations
 * ---------------------------------------------------------------------------------------------
 */

/**
 * Versions of the plugin, its API, WordPress and PHP.
 *
 * @param array $args Unused.
 * @return array|WP_Error
 */
function wpsb_op_status( array $args ) {
	$auth = wpsb_authorize( array( 'list_users' ) );
	if ( is_wp_error( $auth ) ) {
		return $auth;
	}
	return array(
		'plugin_version'    => WPSB_PLUGIN_VERSION,
		'api_version'       => WPSB_API_VERSION,
		'wordpress_version' => get_bloginfo( 'version' ),
		'php_version'       => PHP_VERSION,
	);
}

/**
 * The site's roles as slug and display name.
 *
 * @param array $args Unused.
 * @return array|WP_Error
 */
function wpsb_op_get_roles( array $args ) {
	$auth = wpsb_authorize( array( 'list_users' ) );
	if ( is_wp_error( $auth ) ) {
		return $auth;
	}
	$roles = array();
	foreach ( wp_roles()->get_names() as $slug => $name ) {
		$roles[] = array(
			'slug' => (string) $slug,
			'name' => (string) $name,
		);
	}
	return array( 'roles' => $roles );
}

/**
 * Check the caller may list users, then validate the lookup arguments.
 *
 * @param array $args Raw arguments.
 * @return array|WP_Error Parsed arguments.
 */
function wpsb_authorized_lookup_args( array $args ) {
	$auth = wpsb_authorize( array( 'list_users' ) );
	if ( is_wp_error( $auth ) ) {
		return $auth;
	}
	return wpsb_parse_lookup_args( $args );
}

/**
 * Find one user by contact ID meta, else by exact email.
 *
 * @param array $args email, contact_id, contact_id_key, meta_keys, tags_key.
 * @return array|WP_Error {user: USER|null}
 */
function wpsb_op_lookup_user( array $args ) {
	$q = wpsb_authorized_lookup_args( $args );
	if ( is_wp_error( $q ) ) {
		return $q;
	}
	$found = wpsb_find_user( $q['email'], $q['contact_id'], $q['contact_id_key'] );
	if ( ! $found['user'] ) {
		return array( 'user' => null );
	}
	return array(
		'user' => wpsb_user_payload( $found['user'], $q['meta_keys'], $q['tags_key'], $q['contact_id_key'] ),
	);
}

/**
 * The CRM deleted a contact: remove the user's roles, or delete the user (content reassigned).
 * Administrators are never touched. Safe to repeat: a user already gone is "no_user".
 *
 * @param array $args email and/or contact_id + contact_id_key; policy (remove_roles|delete);
 *                    reassign_to (user ID, required for delete).
 * @return array|WP_Error {outcome: roles_removed|deleted|unchanged|skipped|no_user, user_id, warnings}
 */
function wpsb_op_delete_user( array $args ) {
	$q = wpsb_authorized_lookup_args( $args );
	if ( is_wp_error( $q ) ) {
		return $q;
	}
	$policy = wpsb_arg_string( $args, 'policy' );
	if ( ! in_array( $policy, array( 'remove_roles', 'delete' ), true ) ) {
		return wpsb_invalid_arg( 'policy', 'must be remove_roles or delete.' );
	}
	$found = wpsb_find_user( $q['email'], $q['contact_id'], $q['contact_id_key'] );
	$user  = $found['user'];
	if ( ! $user ) {
		return wpsb_delete_result( 'no_user', 0 );
	}
	if ( in_array( 'administrator', (array) $user->roles, true ) ) {
		return wpsb_delete_result( 'skipped', $user->ID, array( 'the user is an administrator; left untouched' ) );
	}
	if ( 'remove_roles' === $policy ) {
		return wpsb_remove_roles( $user );
	}
	$reassign = isset( $args['reassign_to'] ) ? (int) $args['reassign_to'] : 0;
	if ( $reassign <= 0 || $reassign === (int) $user->ID || ! get_userdata( $reassign ) ) {
		return wpsb_invalid_arg( 'reassign_to', 'must be the ID of another existing user.' );
	}
	$auth = wpsb_authorize( array( 'delete_user' ), $user->ID );
	if ( is_wp_error( $auth ) ) {
		return wpsb_forbidden_as( $auth, 'delete_users' );
	}
	require_once ABSPATH . 'wp-admin/includes/user.php';
	if ( ! wp_delete_user( $user->ID, $reassign ) ) {
		return new WP_Error( 'wpsb_delete_failed', 'WordPress did not delete the user.', array( 'status' => 500 ) );
	}
	return wpsb_delete_result( 'deleted', $user->ID );
}

/**
 * Take every role from a user (they keep their account but lose access the roles gave).
 *
 * @param WP_User $user User.
 * @return array|WP_Error
 */
function wpsb_remove_roles( WP_User $user ) {
	$auth = wpsb_authorize( array( 'promote_user' ), $user->ID );
	if ( is_wp_error( $auth ) ) {
		return wpsb_forbidden_as( $auth, 'promote_users' );
	}
	if ( empty( $user->roles ) ) {
		return wpsb_delete_result( 'unchanged', $user->ID );
	}
	$user->set_role( '' );
	return wpsb_delete_result( 'roles_removed', $user->ID );
}

/**
 * The delete answer.
 *
 * @param string   $outcome  What happened.
 * @param int      $user_id  User ID (0 when none).
 * @param string[] $warnings Warnings.
 * @return array
 */
function wpsb_delete_result( $outcome, $user_id, array $warnings = array() ) {
	return array(
		'outcome'  => $outcome,
		'user_id'  => (int) $user_id,
		'warnings' => $warnings,
	);
}

/**
 * Validate the lookup arguments.
 *
 * @param array $args Raw arguments.
 * @return array|WP_Error
 */
function wpsb_parse_lookup_args( array $args ) {
	$q = array();
	foreach ( array( 'email', 'contact_id', 'contact_id_key', 'tags_key' ) as $key ) {
		$q[ $key ] = wpsb_arg_string( $args, $key );
		if ( is_wp_error( $q[ $key ] ) ) {
			return $q[ $key ];
		}
		if ( null !== $q[ $key ] && '' === trim( $q[ $key ] ) ) {
			$q[ $key ] = null;
		}
	}
	$q['meta_keys'] = wpsb_arg_string_list( $args, 'meta_keys' );
	if ( is_wp_error( $q['meta_keys'] ) ) {
		return $q['meta_keys'];
	}
	$q['meta_keys'] = $q['meta_keys'] ?? array();
	if ( null !== $q['contact_id'] && null === $q['contact_id_key'] ) {
		return wpsb_invalid_arg( 'contact_id_key', 'is required together with contact_id.' );
	}
	if ( null === $q['email'] && null === $q['contact_id'] ) {
		return wpsb_invalid_arg( 'email', 'give an email or a contact_id with its contact_id_key.' );
	}
	return $q;
}

/**
 * Validate and normalise the upsert arguments.
 *
 * @param array $args Raw arguments.
 * @return array|WP_Error
 */
function wpsb_parse_upsert_args( array $args ) {
	$a = array();
	foreach ( array( 'email', 'login', 'password', 'first_name', 'last_name', 'display_name', 'role', 'tags_key', 'contact_id', 'contact_id_key', 'request_id' ) as $key ) {
		$a[ $key ] = wpsb_arg_string( $args, $key );
		if ( is_wp_error( $a[ $key ] ) ) {
			return $a[ $key ];
		}
	}
	$a['default_role'] = wpsb_arg_string( $args, 'default_role', 'subscriber' );
	if ( is_wp_error( $a['default_role'] ) ) {
		return $a['default_role'];
	}
	foreach ( array(
		'set_password'      => false,
		'send_notification' => false,
		'create'            => true,
	) as $key => $default ) {
		$a[ $key ] = wpsb_arg_bool( $args, $key, $default );
		if ( is_wp_error( $a[ $key ] ) ) {
			return $a[ $key ];
		}
	}
	$a['email'] = null === $a['email'] ? '' : trim( $a['email'] );
	if ( '' === $a['email'] || ! is_email( $a['email'] ) ) {
		return new WP_Error(
			'wpsb_invalid_email',
			sprintf( 'Invalid argument "email": "%s" is not a valid email address.', $a['email'] ),
			array(
				'status' => 400,
				'field'  => 'email',
			)
		);
	}
	// An empty string means "not given" for these (an empty role leaves the role alone).
	foreach ( array( 'tags_key', 'contact_id_key', 'contact_id', 'request_id', 'login', 'password', 'role' ) as $key ) {
		if ( null !== $a[ $key ] && '' === trim( $a[ $key ] ) ) {
			$a[ $key ] = null;
		}
	}
	$a['tags'] = wpsb_parse_tags_arg( $args, $a['tags_key'] );
	if ( is_wp_error( $a['tags'] ) ) {
		return $a['tags'];
	}
	$a['meta'] = wpsb_parse_meta_arg( $args );
	if ( is_wp_error( $a['meta'] ) ) {
		return $a['meta'];
	}
	return wpsb_check_upsert_keys( $a );
}

/**
 * Read the tags argument: null/absent leaves tags alone; otherwise a list of strings
 * that needs tags_key.
 *
 * @param array       $args     Raw arguments.
 * @param string|null $tags_key Meta key for tags.
 * @return string[]|null|WP_Error
 */
function wpsb_parse_tags_arg( array $args, $tags_key ) {
	if ( ! array_key_exists( 'tags', $args ) || null === $args['tags'] ) {
		return null;
	}
	if ( is_string( $args['tags'] ) ) {
		return wpsb_invalid_arg( 'tags', 'must be a list of strings.' );
	}
	$tags = wpsb_arg_string_list( $args, 'tags' );
	if ( is_wp_error( $tags ) ) {
		return $tags;
	}
	if ( null === $tags_key ) {
		return wpsb_invalid_arg( 'tags_key', 'is required when tags are given.' );
	}
	return $tags;
}

/**
 * Read the meta argument: an object of key => scalar or array. Null values are skipped
 * (they leave the meta as it is).
 *
 * @param array $args Raw arguments.
 * @return array|WP_Error
 */
function wpsb_parse_meta_arg( array $args ) {
	if ( ! array_key_exists( 'meta', $args ) || null === $args['meta'] ) {
		return array();
	}
	$meta = $args['meta'];
	if ( ! is_array( $meta ) || ( array() !== $meta && wp_is_numeric_array( $meta ) ) ) {
		return wpsb_invalid_arg( 'meta', 'must be an object of key => value.' );
	}
	$out = array();
	foreach ( $meta as $key => $value ) {
		$ok = wpsb_check_meta_key( 'meta', (string) $key );
		if ( is_wp_error( $ok ) ) {
			return $ok;
		}
		if ( null === $value ) {
			continue;
		}
		if ( ! is_scalar( $value ) && ! is_array( $value ) ) {
			return wpsb_invalid_arg( 'meta', sprintf( 'the value of "%s" must be a scalar or an array.', $key ) );
		}
		$out[ (string) $key ] = $value;
	}
	return $out;
}

/**
 * Cross-argument checks for upsert: contact_id needs its key; the keys for tags and the
 * contact ID are allowed and distinct from each other and from meta.
 *
 * @param array $a Parsed arguments.
 * @return array|WP_Error
 */
function wpsb_check_upsert_keys( array $a ) {
	if ( null !== $a['contact_id'] && null === $a['contact_id_key'] ) {
		return wpsb_invalid_arg( 'contact_id_key', 'is required together with contact_id.' );
	}
	foreach ( array( 'tags_key', 'contact_id_key' ) as $field ) {
		if ( null === $a[ $field ] ) {
			continue;
		}
		$ok = wpsb_check_meta_key( $field, $a[ $field ] );
		if ( is_wp_error( $ok ) ) {
			return $ok;
		}
		if ( array_key_exists( $a[ $field ], $a['meta'] ) ) {
			return wpsb_invalid_arg( 'meta', sprintf( 'the key "%s" is already set through %s.', $a[ $field ], $field ) );
		}
	}
	if ( null !== $a['tags_key'] && $a['tags_key'] === $a['contact_id_key'] ) {
		return wpsb_invalid_arg( 'tags_key', 'must differ from contact_id_key.' );
	}
	return $a;
}

/**
 * Find or create a user, serialised per email, and bring it in line with the arguments.
 *
 * @param array $args See wordpress/README.md.
 * @return array|WP_Error {user_id, created, replayed, outcome, login, role, changed, warnings}
 */
function wpsb_op_upsert_user( array $args ) {
	$auth = wpsb_authorize( array( 'list_users' ) );
	if ( is_wp_error( $auth ) ) {
		return $auth;
	}
	$a = wpsb_parse_upsert_args( $args );
	if ( is_wp_error( $a ) ) {
		return $a;
	}
	$locked = wpsb_acquire_lock( $a['email'] );
	if ( is_wp_error( $locked ) ) {
		return $locked;
	}
	try {
		return wpsb_upsert_locked( $a );
	} finally {
		wpsb_release_lock( $a['email'] );
	}
}

/**
 * The find-or-create, with the email lock held.
 *
 * @param array $a Parsed arguments.
 * @return array|WP_Error
 */
function wpsb_upsert_locked( array $a ) {
	$found = wpsb_find_user( $a['email'], $a['contact_id'], $a['contact_id_key'] );
	if ( $found['user'] ) {
		return wpsb_update_user( $found['user'], $found['matched_by'], $a );
	}
	if ( ! $a['create'] ) {
		return wpsb_upsert_result( null, 'no_user', array(), array() );
	}
	return wpsb_create_user( $a );
}

/**
 * The upsert answer.
 *
 * @param WP_User|null $user     User (null for no_user).
 * @param string       $outcome  created|updated|unchanged|no_user.
 * @param string[]     $changed  Changed fields.
 * @param string[]     $warnings Warnings.
 * @param bool         $replayed Whether this repeats an earlier create (same request_id).
 * @return array
 */
function wpsb_upsert_result( $user, $outcome, array $changed, array $warnings, $replayed = false ) {
	return array(
		'user_id'  => $user ? (int) $user->ID : 0,
		'created'  => 'created' === $outcome,
		'replayed' => $replayed,
		'outcome'  => $outcome,
		'login'    => $user ? $user->user_login : '',
		'role'     => $user ? wpsb_primary_role( $user ) : '',
		'changed'  => array_values( $changed ),
		'warnings' => array_values( $warnings ),
	);
}

/**
 * A login that no user has yet: sanitised base, then base1, base2, ... (as WP Fusion does).
 *
 * @param string $base Wanted login (default: the email).
 * @return string
 */
function wpsb_unique_login( $base ) {
	$base = sanitize_user( $base, true );
	$base = trim( substr( $base, 0, 50 ) );
	if ( '' === $base ) {
		$base = 'user';
	}
	$login = $base;
	for ( $i = 1; username_exists( $login ) || wpsb_login_is_illegal( $login ); $i++ ) {
		$login = $i < 1000 ? $base . $i : $base . wp_rand( 1000, PHP_INT_MAX );
	}
	return $login;
}

/**
 * Whether WordPress would refuse this login as illegal (illegal_user_logins filter).
 *
 * @param string $login Login.
 * @return bool
 */
function wpsb_login_is_illegal( $login ) {
	$illegal = (array) apply_filters( 'illegal_user_logins', array() );
	return in_array( strtolower( $login ), array_map( 'strtolower', $illegal ), true );
}

/**
 * Map a WordPress user-save error to our error: 409 for taken login/email, else 400.
 *
 * @param WP_Error $error From wp_insert_user()/wp_update_user().
 * @param string   $code  Our error code.
 * @return WP_Error
 */
function wpsb_wrap_user_error( WP_Error $error, $code ) {
	$wp_code  = (string) $error->get_error_code();
	$conflict = in_array( $wp_code, array( 'existing_user_login', 'existing_user_email' ), true );
	return new WP_Error(
		$code,
		sprintf( '%s: %s', $wp_code, $error->get_error_message() ),
		array(
			'status'        => $conflict ? 409 : 400,
			'wp_error_code' => $wp_code,
		)
	);
}

/**
 * Create the user (lock held, nobody found).
 *
 * @param array $a Parsed arguments.
 * @return array|WP_Error
 */
function wpsb_create_user( array $a ) {
	$caps = null === $a['role'] ? array( 'create_users' ) : array( 'create_users', 'promote_users' );
	$auth = wpsb_authorize( $caps );
	if ( is_wp_error( $auth ) ) {
		return $auth;
	}
	$warnings = array();
	$userdata = array(
		'user_login' => wpsb_unique_login( null === $a['login'] ? $a['email'] : $a['login'] ),
		'user_email' => $a['email'],
		'user_pass'  => null === $a['password'] ? wp_generate_password( 24 ) : $a['password'],
		'role'       => wpsb_resolve_role( $a['role'], $a['default_role'], $warnings ),
	);
	$changed  = array( 'email', 'login', 'role' );
	foreach ( array( 'first_name', 'last_name', 'display_name' ) as $field ) {
		if ( null !== $a[ $field ] ) {
			$userdata[ $field ] = $a[ $field ];
			$changed[]          = $field;
		}
	}
	// wp_insert_user() expects slashed data, as core's REST controller passes it.
	$user_id = wp_insert_user( wp_slash( $userdata ) );
	if ( is_wp_error( $user_id ) ) {
		return wpsb_wrap_user_error( $user_id, 'wpsb_create_failed' );
	}
	if ( null !== $a['request_id'] ) {
		update_user_meta( $user_id, WPSB_REQUEST_ID_META, wp_slash( $a['request_id'] ) );
	}
	wpsb_apply_meta( $user_id, $a, $changed );
	if ( $a['send_notification'] ) {
		wp_new_user_notification( $user_id, null, 'user' );
	}
	return wpsb_upsert_result( get_userdata( $user_id ), 'created', $changed, $warnings );
}

/**
 * Write meta, tags and the contact ID where they differ.
 *
 * @param int      $user_id User ID.
 * @param array    $a       Parsed arguments.
 * @param string[] $changed Collects changed field names.
 * @return void
 */
function wpsb_apply_meta( $user_id, array $a, array &$changed ) {
	foreach ( $a['meta'] as $key => $value ) {
		wpsb_write_meta( $user_id, $key, $value, 'meta.' . $key, $changed );
	}
	if ( null !== $a['tags'] ) {
		wpsb_write_meta( $user_id, $a['tags_key'], $a['tags'], 'tags', $changed );
	}
	if ( null !== $a['contact_id'] ) {
		wpsb_write_meta( $user_id, $a['contact_id_key'], $a['contact_id'], 'contact_id', $changed );
	}
}

/**
 * Update an existing user where it differs from the arguments (lock held).
 *
 * @param WP_User $user       User found.
 * @param string  $matched_by contact_id|email.
 * @param array   $a          Parsed arguments.
 * @return array|WP_Error
 */
function wpsb_update_user( WP_User $user, $matched_by, array $a ) {
	$auth = wpsb_authorize( array( 'edit_user' ), $user->ID );
	if ( is_wp_error( $auth ) ) {
		return wpsb_forbidden_as( $auth, 'edit_users' );
	}
	$replayed = null !== $a['request_id']
		&& (string) get_user_meta( $user->ID, WPSB_REQUEST_ID_META, true ) === $a['request_id'];
	$warnings = array();
	$changed  = array();
	$core     = wpsb_core_changes( $user, $matched_by, $a, $changed );
	if ( is_wp_error( $core ) ) {
		return $core;
	}
	$role = wpsb_role_change( $user, $a, $warnings );
	if ( is_wp_error( $role ) ) {
		return $role;
	}
	if ( $core ) {
		$saved = wpsb_save_core_fields( $user->ID, $core );
		if ( is_wp_error( $saved ) ) {
			return $saved;
		}
	}
	if ( null !== $role ) {
		$fresh = get_userdata( $user->ID );
		$fresh->set_role( $role );
		$changed[] = 'role';
	}
	wpsb_apply_meta( $user->ID, $a, $changed );
	$user = get_userdata( $user->ID );
	if ( $replayed ) {
		return wpsb_upsert_result( $user, 'created', $changed, $warnings, true );
	}
	return wpsb_upsert_result( $user, $changed ? 'updated' : 'unchanged', $changed, $warnings );
}

/**
 * Re-label a capability error with the capability name the contract documents.
 *
 * @param WP_Error $error Error from wpsb_authorize().
 * @param string   $cap   Capability name to report.
 * @return WP_Error
 */
function wpsb_forbidden_as( WP_Error $error, $cap ) {
	if ( 'wpsb_forbidden' !== $error->get_error_code() ) {
		return $error;
	}
	return new WP_Error(
		'wpsb_forbidden',
		sprintf( 'The authenticated user lacks the "%s" capability.', $cap ),
		array( 'status' => 403 )
	);
}

/**
 * The core user fields (users table and name meta) that differ from the arguments.
 *
 * @param WP_User  $user       User.
 * @param string   $matched_by contact_id|email.
 * @param array    $a          Parsed arguments.
 * @param string[] $changed    Collects changed field names.
 * @return array|WP_Error Field => new value (wp_update_user() names); 409 wpsb_email_conflict.
 */
function wpsb_core_changes( WP_User $user, $matched_by, array $a, array &$changed ) {
	$core = array();
	// Only a user found by contact ID can get a new email; a case-only difference is no change.
	if ( 'contact_id' === $matched_by && wpsb_normalize_email( $a['email'] ) !== wpsb_normalize_email( $user->user_email ) ) {
		$other = wpsb_find_user_id_by_email( $a['email'] );
		if ( $other && $other !== (int) $user->ID ) {
			return new WP_Error(
				'wpsb_email_conflict',
				sprintf( 'The email "%s" already belongs to user %d.', $a['email'], $other ),
				array(
					'status'        => 409,
					'other_user_id' => $other,
				)
			);
		}
		$core['user_email'] = $a['email'];
		$changed[]          = 'email';
	}
	foreach ( array( 'first_name', 'last_name', 'display_name' ) as $field ) {
		if ( null !== $a[ $field ] && (string) $user->$field !== wpsb_stored_user_field( $field, $a[ $field ] ) ) {
			$core[ $field ] = $a[ $field ];
			$changed[]      = $field;
		}
	}
	// WordPress hashes the slashed password (wp-login.php posts slashed data), so check it slashed.
	if ( $a['set_password'] && null !== $a['password']
		&& ! wp_check_password( wp_slash( $a['password'] ), $user->user_pass, $user->ID ) ) {
		$core['user_pass'] = $a['password'];
		$changed[]         = 'password';
	}
	return $core;
}

/**
 * A name field as wp_insert_user() would store it (its pre_user_* filters strip tags and
 * encode "&", so compare with this, not with the raw argument).
 *
 * @param string $field first_name|last_name|display_name.
 * @param string $value Raw value.
 * @return string
 */
function wpsb_stored_user_field( $field, $value ) {
	// wp_insert_user() runs these filters on slashed data and stores the unslashed result.
	return (string) wp_unslash( apply_filters( "pre_user_{$field}", wp_slash( $value ) ) );
}

/**
 * Save core fields with wp_update_user(), without the "email/password changed" mails.
 *
 * @param int   $user_id User ID.
 * @param array $core    Field => value.
 * @return true|WP_Error
 */
function wpsb_save_core_fields( $user_id, array $core ) {
	add_filter( 'send_password_change_email', '__return_false', 999 );
	add_filter( 'send_email_change_email', '__return_false', 999 );
	$result = wp_update_user( wp_slash( array( 'ID' => $user_id ) + $core ) );
	remove_filter( 'send_password_change_email', '__return_false', 999 );
	remove_filter( 'send_email_change_email', '__return_false', 999 );
	if ( is_wp_error( $result ) ) {
		return wpsb_wrap_user_error( $result, 'wpsb_update_failed' );
	}
	return true;
}

/**
 * The role to set on an existing user, or null for none, applying the role policy.
 *
 * @param WP_User  $user     User.
 * @param array    $a        Parsed arguments.
 * @param string[] $warnings Collects warnings.
 * @return string|null|WP_Error 403 wpsb_forbidden without promote_users.
 */
function wpsb_role_change( WP_User $user, array $a, array &$warnings ) {
	if ( null === $a['role'] ) {
		return null;
	}
	$role = wpsb_resolve_role( $a['role'], $a['default_role'], $warnings );
	if ( array( $role ) === array_values( $user->roles ) ) {
		return null;
	}
	if ( in_array( 'administrator', (array) $user->roles, true ) ) {
		$warnings[] = sprintf( 'user %d is an administrator; the role is not changed.', $user->ID );
		return null;
	}
	$auth = wpsb_authorize( array( 'promote_user' ), $user->ID );
	if ( is_wp_error( $auth ) ) {
		return wpsb_forbidden_as( $auth, 'promote_users' );
	}
	return $role;
}

/*
 * ---------------------------------------------------------------------------------------------
 * REST adaptor
 * ---------------------------------------------------------------------------------------------
 */

/**
 * Register the REST routes.
 *
 * @return void
 */
function wpsb_register_rest_routes() {
	foreach ( wpsb_operations() as $op => $def ) {
		register_rest_route(
			WPSB_REST_NAMESPACE,
			$def['route'],
			array(
				'methods'             => $def['method'],
				'callback'            => static function ( WP_REST_Request $request ) use ( $op ) {
					return wpsb_rest_handle( $op, $request );
				},
				// Each operation checks its own capabilities; this refuses anonymous calls early.
				'permission_callback' => 'wpsb_rest_permission',
			)
		);
	}
}
add_action( 'rest_api_init', 'wpsb_register_rest_routes' );

/**
 * REST permission check: a logged-in user with list_users.
 *
 * @return true|WP_Error
 */
function wpsb_rest_permission() {
	return wpsb_authorize( array( 'list_users' ) );
}

/**
 * Run an operation for a REST request (query string and JSON body merged).
 *
 * @param string          $op      Operation key.
 * @param WP_REST_Request $request Request.
 * @return WP_REST_Response|WP_Error
 */
function wpsb_rest_handle( $op, WP_REST_Request $request ) {
	$args = $request->get_json_params();
	if ( ! is_array( $args ) ) {
		$args = array();
	}
	$args  += $request->get_body_params() + $request->get_query_params();
	$result = wpsb_dispatch( $op, $args );
	if ( is_wp_error( $result ) ) {
		return $result;
	}
	return rest_ensure_response( $result );
}

/*
 * ---------------------------------------------------------------------------------------------
 * XML-RPC adaptor
 * ---------------------------------------------------------------------------------------------
 */

/**
 * Add the wpsb.* methods.
 *
 * @param array $methods Method name => callback.
 * @return array
 */
function wpsb_xmlrpc_methods( $methods ) {
	foreach ( wpsb_operations() as $def ) {
		// IXR_Server::call() only accepts function names (no closures).
		$methods[ $def['xmlrpc'] ] = $def['xmlrpc_adaptor'];
	}
	return $methods;
}
add_filter( 'xmlrpc_methods', 'wpsb_xmlrpc_methods' );

/**
 * XML-RPC wpsb.status(blog_id, username, password[, struct]).
 *
 * @param array $params Parameters.
 * @return array|IXR_Error
 */
function wpsb_xmlrpc_status( $params ) {
	return wpsb_xmlrpc_call( 'status', 'wpsb.status', $params );
}

/**
 * XML-RPC wpsb.getRoles(blog_id, username, password[, struct]).
 *
 * @param array $params Parameters.
 * @return array|IXR_Error
 */
function wpsb_xmlrpc_get_roles( $params ) {
	return wpsb_xmlrpc_call( 'get_roles', 'wpsb.getRoles', $params );
}

/**
 * XML-RPC wpsb.lookupUser(blog_id, username, password, struct).
 *
 * @param array $params Parameters.
 * @return array|IXR_Error
 */
function wpsb_xmlrpc_lookup_user( $params ) {
	return wpsb_xmlrpc_call( 'lookup', 'wpsb.lookupUser', $params );
}

/**
 * XML-RPC wpsb.upsertUser(blog_id, username, password, struct).
 *
 * @param array $params Parameters.
 * @return array|IXR_Error
 */
function wpsb_xmlrpc_upsert_user( $params ) {
	return wpsb_xmlrpc_call( 'upsert', 'wpsb.upsertUser', $params );
}

/**
 * XML-RPC wpsb.deleteUser(blog_id, username, password, struct).
 *
 * @param array $params Parameters.
 * @return array|IXR_Error
 */
function wpsb_xmlrpc_delete_user( $params ) {
	return wpsb_xmlrpc_call( 'delete', 'wpsb.deleteUser', $params );
}

/**
 * Authenticate an XML-RPC call and run the operation.
 *
 * @param string $op     Operation key.
 * @param string $method XML-RPC method name (for the xmlrpc_call action).
 * @param mixed  $params (blog_id, username, password[, struct args]).
 * @return array|IXR_Error IXR_Error(HTTP-like status, "code: message") on failure.
 */
function wpsb_xmlrpc_call( $op, $method, $params ) {
	global $wp_xmlrpc_server;
	if ( ! is_array( $params ) || count( $params ) < 3 || ! wp_is_numeric_array( $params ) ) {
		return new IXR_Error( 400, 'wpsb_invalid_args: expected (blog_id, username, password, struct args).' );
	}
	$params = array_values( $params );
	if ( ! $wp_xmlrpc_server->login( (string) $params[1], (string) $params[2] ) ) {
		return $wp_xmlrpc_server->error;
	}
	$args = $params[3] ?? array();
	if ( ! is_array( $args ) || ( array() !== $args && wp_is_numeric_array( $args ) ) ) {
		return new IXR_Error( 400, 'wpsb_invalid_args: the fourth parameter must be a struct.' );
	}
	/** This action is documented in wp-includes/class-wp-xmlrpc-server.php */
	do_action( 'xmlrpc_call', $method, $args, $wp_xmlrpc_server );
	$result = wpsb_dispatch( $op, $args );
	if ( is_wp_error( $result ) ) {
		$data   = $result->get_error_data();
		$status = is_array( $data ) && isset( $data['status'] ) ? (int) $data['status'] : 500;
		return new IXR_Error( $status, $result->get_error_code() . ': ' . $result->get_error_message() );
	}
	return wpsb_xmlrpc_value( $result );
}

/**
 * Prepare an answer for XML-RPC, which has no null: struct members that are null are
 * dropped (an absent member means null). Associative arrays and objects become structs
 * (objects, so that an empty one stays a struct); lists stay arrays.
 *
 * @param mixed $value Answer.
 * @return mixed
 */
function wpsb_xmlrpc_value( $value ) {
	if ( is_object( $value ) ) {
		$value = get_object_vars( $value );
		$is_struct = true;
	} elseif ( is_array( $value ) ) {
		$is_struct = array() !== $value && ! wp_is_numeric_array( $value );
	} else {
		return $value;
	}
	if ( ! $is_struct ) {
		return array_map( 'wpsb_xmlrpc_value', array_values( $value ) );
	}
	$out = array();
	foreach ( $value as $k => $v ) {
		if ( null !== $v ) {
			$out[ $k ] = wpsb_xmlrpc_value( $v );
		}
	}
	return (object) $out;
}
