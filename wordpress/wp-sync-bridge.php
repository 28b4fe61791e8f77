<?php
/**
 * Plugin Name: WP Sync Bridge companion
 * Description: User find-or-create for the wp-sync-bridge daemon, over REST (wp-sync-bridge/v1) and XML-RPC (wpsb.*). Serialises account creation per email so concurrent webhooks never create duplicate users; never modifies a privileged user, never grants a privileged role, never touches protected meta.
 * Version: 2.5.0
 * Requires at least: 6.0
 * Requires PHP: 7.4
 *
 * Install as a must-use plugin: copy this file to wp-content/mu-plugins/.
 * The contract (routes, methods, arguments, answers, error codes) is in wordpress/README.md
 * of the wp-sync-bridge repository, the security policy in wordpress/SECURITY.md.
 *
 * Layout: the security policy first, one class per concern (WPSB_Privilege, WPSB_Meta_Keys,
 * WPSB_Role_Grants, WPSB_Bridge_Role); then each operation as one function taking an array of
 * arguments and returning array|WP_Error (wpsb_op_*), which asks the policy classes before it
 * reads or writes anything. The REST and XML-RPC adaptors only translate arguments in and
 * answers/errors out.
 *
 * @package wp-sync-bridge
 */

defined( 'ABSPATH' ) || exit;

define( 'WPSB_PLUGIN_VERSION', '2.5.0' );
// 2: privileged users skipped, protected meta and role grants refused (wordpress/SECURITY.md).
define( 'WPSB_API_VERSION', 2 );
define( 'WPSB_REST_NAMESPACE', 'wp-sync-bridge/v1' );
define( 'WPSB_REQUEST_ID_META', '_wpsb_request_id' );
define( 'WPSB_LOCK_TIMEOUT_S', 10 );
define( 'WPSB_SCHEMA_VERSION', 1 );
// Users per batch upsert request: creates gain little beyond 50; unchanged users still do (the
// ~25 ms bootstrap shared by 100: 0.7-0.9 ms of WordPress CPU each here, 1.1 by 50).
define( 'WPSB_BATCH_MAX_ITEMS', 100 );
// Items of one batch carrying a password, at most: each costs a hash or a check of it (bcrypt from
// WordPress 6.8, 65-300 ms), all inside the batch's transaction and its locks.
define( 'WPSB_BATCH_MAX_PASSWORDS', 10 );
// Optional capabilities, advertised in status (a bridge that knows none of them still works).
define( 'WPSB_FEATURES', array( 'upsert_batch' ) );

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
		'upsert_batch' => array(
			'callback'       => 'wpsb_op_upsert_users',
			'method'         => 'POST',
			'route'          => '/users/upsert-batch',
			'xmlrpc'         => 'wpsb.upsertUsers',
			'xmlrpc_adaptor' => 'wpsb_xmlrpc_upsert_users',
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
 * =============================================================================================
 * Security policy (wordpress/SECURITY.md)
 *
 * The plugin is the security boundary, whoever calls it: REST or XML-RPC, the bridge or any
 * other authenticated user. The four classes below decide which meta keys may be named, which
 * users may be changed, which roles may be granted, and what the bridge's own role may do. The
 * operations further down only ask them.
 * =============================================================================================
 */

/**
 * Privileged users and roles: those who can administer users or the site, or run code or
 * unfiltered script on it. The plugin never modifies a privileged user and never grants a
 * privileged role.
 */
final class WPSB_Privilege {

	/**
	 * Capabilities that make a user or a role privileged. The user and site administration
	 * capabilities, and those that turn an account into the site's owner by other means: running
	 * code (plugins, themes, files, core) or publishing unfiltered markup (a script in a post runs
	 * in an administrator's browser). level_8 and up are the legacy user levels of administrators.
	 */
	const CAPABILITIES = array(
		'manage_options',
		'list_users',
		'create_users',
		'edit_users',
		'promote_users',
		'delete_users',
		'remove_users',
		'manage_network',
		'manage_network_users',
		'manage_network_options',
		'manage_sites',
		'activate_plugins',
		'install_plugins',
		'edit_plugins',
		'update_plugins',
		'delete_plugins',
		'install_themes',
		'edit_themes',
		'update_themes',
		'delete_themes',
		'switch_themes',
		'update_core',
		'edit_files',
		'unfiltered_html',
		'unfiltered_upload',
		'level_8',
		'level_9',
		'level_10',
	);

	/** Name of the wp-config.php constant (and the option, lower-case) listing managed roles. */
	const MANAGED_ROLES_CONSTANT = 'WPSB_MANAGED_PRIVILEGED_ROLES';
	const MANAGED_ROLES_OPTION   = 'wpsb_managed_privileged_roles';

	/**
	 * Whether a role carries any privileged capability (administrator always counts).
	 *
	 * @param string $slug Role slug.
	 * @return bool False for a role the site does not have.
	 */
	public static function role_is_privileged( $slug ) {
		if ( 'administrator' === $slug ) {
			return true;
		}
		$role = get_role( $slug );
		return $role && self::grants_any( (array) $role->capabilities );
	}

	/**
	 * Whether the plugin must leave this user alone: privileged on this site (or, on a network,
	 * on any of the user's sites), except through roles the operator opted in.
	 *
	 * @param WP_User $user User.
	 * @return bool
	 */
	public static function is_protected_user( WP_User $user ) {
		if ( ! $user->exists() ) {
			return false;
		}
		if ( self::privileged_here( $user ) ) {
			return true;
		}
		if ( is_multisite() ) {
			// The users table is shared: an email changed here changes it on every site.
			foreach ( array_keys( get_blogs_of_user( $user->ID, true ) ) as $site_id ) {
				$there = new WP_User( $user->ID, '', (int) $site_id );
				if ( (int) $site_id !== get_current_blog_id() && self::privileged_on_site( $there ) ) {
					return true;
				}
			}
		}
		return false;
	}

	/**
	 * The non-administrator roles the operator lets the plugin manage although they are
	 * privileged (e.g. a WooCommerce shop_manager who is also a CRM contact): the constant
	 * WPSB_MANAGED_PRIVILEGED_ROLES in wp-config.php and the option wpsb_managed_privileged_roles,
	 * each a list or a comma-separated string of slugs. administrator, roles with manage_options
	 * and unknown roles are dropped: they can never be managed.
	 *
	 * @return string[] Role slugs.
	 */
	public static function managed_roles() {
		$named = array();
		if ( defined( self::MANAGED_ROLES_CONSTANT ) ) {
			$named = self::role_list( constant( self::MANAGED_ROLES_CONSTANT ) );
		}
		$named = array_merge( $named, self::role_list( get_option( self::MANAGED_ROLES_OPTION, array() ) ) );
		$out   = array();
		foreach ( array_unique( $named ) as $slug ) {
			$role = get_role( $slug );
			if ( $role && 'administrator' !== $slug && empty( $role->capabilities['manage_options'] ) ) {
				$out[] = $slug;
			}
		}
		return $out;
	}

	/** @var array<string, bool> privileged_on_site() answers, by everything they depend on. */
	private static $answers = array();

	/** Callbacks WordPress core itself hooks on user_has_cap (6.1 to 6.8). */
	const CORE_HAS_CAP_FILTERS = array(
		'wp_maybe_grant_install_languages_cap',
		'wp_maybe_grant_resume_extensions_caps',
		'wp_maybe_grant_site_health_caps',
	);

	/**
	 * privileged_on_site(), answered once per request for users whose capabilities are alike (a
	 * batch of subscribers asks it once, not once per user: 30 user_can() calls each).
	 *
	 * The answer is kept only where it is a function of what the key holds: a single site (on a
	 * network, super admins and other sites count), and no user_has_cap or map_meta_cap callback
	 * but core's own and this plugin's, which read nothing but the capability maps. Then it
	 * depends on the user's own capabilities (caps), the merged map WordPress built for the
	 * object (allcaps), the definitions of the user's roles and the managed roles, all in the
	 * key; whatever changes one of them changes the key. Any other callback (another plugin's,
	 * which may look at anything) and every user is asked in full.
	 *
	 * @param WP_User $user User (of the current site).
	 * @return bool
	 */
	private static function privileged_here( WP_User $user ) {
		if ( is_multisite() || ! self::only_known_cap_filters() ) {
			return self::privileged_on_site( $user );
		}
		$roles = array();
		foreach ( array_keys( (array) $user->caps ) as $key ) {
			$role          = wp_roles()->get_role( $key );
			$roles[ $key ] = $role ? (array) $role->capabilities : null;
		}
		$inputs = array( (array) $user->caps, (array) $user->allcaps, $roles, self::managed_roles() );
		// phpcs:ignore WordPress.PHP.DiscouragedPHPFunctions.serialize_serialize
		$key = md5( serialize( $inputs ) );
		if ( ! isset( self::$answers[ $key ] ) ) {
			self::$answers[ $key ] = self::privileged_on_site( $user );
		}
		return self::$answers[ $key ];
	}

	/**
	 * Whether user_has_cap and map_meta_cap carry only core's callbacks and this plugin's.
	 *
	 * @return bool
	 */
	private static function only_known_cap_filters() {
		global $wp_filter;
		$known = array(
			'user_has_cap' => self::CORE_HAS_CAP_FILTERS,
			'map_meta_cap' => array( 'WPSB_Bridge_Role::filter_meta_cap' ),
		);
		foreach ( $known as $hook => $callbacks ) {
			if ( ! isset( $wp_filter[ $hook ] ) ) {
				continue;
			}
			foreach ( $wp_filter[ $hook ]->callbacks as $at_priority ) {
				foreach ( array_keys( $at_priority ) as $id ) {
					if ( ! in_array( $id, $callbacks, true ) ) {
						return false;
					}
				}
			}
		}
		return true;
	}

	/**
	 * Whether the user is privileged on the site the WP_User object is for.
	 *
	 * Every source of a capability counts on its own (each role, each capability granted to the
	 * user directly, each granted at run time by a user_has_cap filter), so a revocation cannot
	 * hide one; only what roles in managed_roles() grant is overlooked.
	 *
	 * @param WP_User $user User (for the site to check).
	 * @return bool
	 */
	private static function privileged_on_site( WP_User $user ) {
		$roles = (array) $user->roles;
		if ( in_array( 'administrator', $roles, true ) || ! empty( $user->allcaps['manage_options'] )
			|| ( is_multisite() && is_super_admin( $user->ID ) ) ) {
			return true; // Never managed, whatever the operator lists.
		}
		$managed      = self::managed_roles();
		$managed_caps = array();
		foreach ( (array) $user->caps as $key => $granted ) {
			$role = wp_roles()->get_role( $key );
			if ( $role && $granted && in_array( $key, $managed, true ) ) {
				$managed_caps += array_filter( (array) $role->capabilities );
			} elseif ( $role ) {
				if ( $granted && self::grants_any( (array) $role->capabilities ) ) {
					return true;
				}
			} elseif ( $granted && in_array( $key, self::CAPABILITIES, true ) ) {
				return true; // Granted to the user directly, not through a role.
			}
		}
		// Capabilities other plugins grant at run time (user_has_cap), beyond a managed role's.
		foreach ( self::CAPABILITIES as $cap ) {
			if ( empty( $managed_caps[ $cap ] ) && user_can( $user, $cap ) ) {
				return true;
			}
		}
		return false;
	}

	/**
	 * Whether a capability map grants any privileged capability.
	 *
	 * @param array $caps Capability => granted.
	 * @return bool
	 */
	private static function grants_any( array $caps ) {
		foreach ( self::CAPABILITIES as $cap ) {
			if ( ! empty( $caps[ $cap ] ) ) {
				return true;
			}
		}
		return false;
	}

	/**
	 * Slugs from a list or a comma-separated string.
	 *
	 * @param mixed $value Constant or option value.
	 * @return string[]
	 */
	private static function role_list( $value ) {
		if ( is_string( $value ) ) {
			$value = explode( ',', $value );
		}
		$out = array();
		foreach ( (array) $value as $slug ) {
			if ( is_string( $slug ) && '' !== trim( $slug ) ) {
				$out[] = trim( $slug );
			}
		}
		return $out;
	}
}

/**
 * The one meta-key policy, for every key a caller names: meta written by upsert, tags_key,
 * contact_id_key, and lookup's meta_keys (reads too: a key that may not be written may not be
 * read either).
 *
 * MySQL compares meta_key with the table's collation: case-insensitive, trailing spaces
 * ignored, and under utf8mb4_unicode_* accents and full-width letters folded too. A key that
 * differs from a protected one only in those ways reads and writes the protected row. So
 * protection is checked on the key as MySQL sees it, and only keys of a plain form (lower-case
 * ASCII, where no two distinct keys compare equal) are accepted at all. Lower-case also keeps
 * WordPress's meta cache, which is case-sensitive, in step with MySQL, which is not.
 */
final class WPSB_Meta_Keys {

	/** Accepted keys: a lower-case letter or digit, then letters, digits, _ - . : (1-191 chars). */
	const FORM = '/^[a-z0-9][a-z0-9_.:-]{0,190}$/D';

	/** Keys holding sessions or credentials. */
	const PROTECTED_KEYS = array( 'session_tokens', '_application_passwords' );

	/**
	 * Endings of the keys that hold roles and user levels on some site: {prefix}capabilities,
	 * {prefix}N_user_level on a network, or another install sharing the users table.
	 */
	const PROTECTED_SUFFIXES = array( 'capabilities', 'user_level' );

	/** The plugin's own keys (e.g. _wpsb_request_id). */
	const OWN_PREFIXES = array( 'wpsb_', '_wpsb_' );

	/**
	 * Check a key a caller names; true when it may be read and written through the plugin.
	 *
	 * @param string $field Argument name, for the error.
	 * @param mixed  $key   The meta key.
	 * @return true|WP_Error 403 wpsb_protected_meta, or 400 wpsb_invalid_meta_key; both name the key.
	 */
	public static function check( $field, $key ) {
		if ( ! is_string( $key ) || '' === $key ) {
			return self::refusal( 'wpsb_invalid_meta_key', 400, $field, (string) $key, 'is empty' );
		}
		if ( self::is_protected( $key ) ) {
			$why = 'is protected (roles, sessions, credentials or private data)';
			return self::refusal( 'wpsb_protected_meta', 403, $field, $key, $why );
		}
		if ( ! preg_match( self::FORM, $key ) ) {
			return self::refusal(
				'wpsb_invalid_meta_key',
				400,
				$field,
				$key,
				'is not accepted: use 1 to 191 lower-case ASCII letters, digits, "_", "-", ".", ":", not starting with "_"'
			);
		}
		return true;
	}

	/**
	 * The key as MySQL compares it (trailing spaces ignored, case folded).
	 *
	 * @param string $key Meta key.
	 * @return string
	 */
	public static function mysql_form( $key ) {
		return strtolower( rtrim( $key, ' ' ) );
	}

	/**
	 * Whether a key is protected: roles and user levels, sessions, application passwords, every
	 * key is_protected_meta() protects (a leading "_"), the plugin's own keys, and those a site
	 * adds with the wpsb_protected_meta_key filter (e.g. another plugin's secrets).
	 *
	 * @param string $key Meta key as given.
	 * @return bool
	 */
	public static function is_protected( $key ) {
		$mysql = self::mysql_form( $key );
		if ( in_array( $mysql, self::PROTECTED_KEYS, true ) ) {
			return true;
		}
		foreach ( self::PROTECTED_SUFFIXES as $suffix ) {
			if ( substr( $mysql, -strlen( $suffix ) ) === $suffix ) {
				return true;
			}
		}
		foreach ( self::OWN_PREFIXES as $prefix ) {
			if ( 0 === strpos( $mysql, $prefix ) ) {
				return true;
			}
		}
		if ( is_protected_meta( $key, 'user' ) || is_protected_meta( $mysql, 'user' ) ) {
			return true;
		}
		/**
		 * Filters whether a user meta key is protected from the plugin's callers. A filter can
		 * only add protection: the built-in rules above are applied first.
		 *
		 * @param bool   $protected False.
		 * @param string $mysql     The key lower-cased, trailing spaces removed.
		 */
		return (bool) apply_filters( 'wpsb_protected_meta_key', false, $mysql );
	}

	/**
	 * A refusal naming the argument and the key (JSON-escaped, so odd characters stay visible).
	 *
	 * @param string $code   Error code.
	 * @param int    $status HTTP status.
	 * @param string $field  Argument name.
	 * @param string $key    The key.
	 * @param string $why    What is wrong.
	 * @return WP_Error
	 */
	private static function refusal( $code, $status, $field, $key, $why ) {
		$flags = JSON_INVALID_UTF8_SUBSTITUTE | JSON_UNESCAPED_SLASHES;
		$shown = (string) wp_json_encode( substr( $key, 0, 200 ), $flags );
		return new WP_Error(
			$code,
			sprintf( 'Invalid argument "%s": the meta key %s %s.', $field, $shown, $why ),
			array(
				'status' => $status,
				'field'  => $field,
				'key'    => (string) json_decode( $shown ),
			)
		);
	}
}

/**
 * Which roles the plugin assigns. A role is assigned only by a caller with promote_users, only
 * when it is in the caller's get_editable_roles(), and never when it is privileged
 * (administrator included), whoever asks: role and default_role alike.
 */
final class WPSB_Role_Grants {

	/**
	 * Why the current user may not be given this role by the plugin, or null when they may.
	 *
	 * @param string $slug Role slug known to the site.
	 * @return string|null
	 */
	public static function refusal( $slug ) {
		if ( 'administrator' === $slug ) {
			return 'administrator is never granted';
		}
		if ( WPSB_Privilege::role_is_privileged( $slug ) ) {
			return 'it carries capabilities that administer users or the site';
		}
		if ( ! array_key_exists( $slug, self::editable_roles() ) ) {
			return 'it is not among the roles the caller may assign (editable_roles)';
		}
		return null;
	}

	/**
	 * The roles the current user may have the plugin assign (none without promote_users).
	 *
	 * @return string[] Role slugs.
	 */
	public static function grantable_roles() {
		if ( ! current_user_can( 'promote_users' ) ) {
			return array();
		}
		$out = array();
		foreach ( array_keys( wp_roles()->get_names() ) as $slug ) {
			if ( null === self::refusal( (string) $slug ) ) {
				$out[] = (string) $slug;
			}
		}
		return $out;
	}

	/**
	 * The role of a new user: the requested role when it may be granted, else default_role
	 * (with a warning). The caller's promote_users is checked before (wpsb_create_user()).
	 *
	 * @param string|null $role         Requested role, slug or display name (null: default_role).
	 * @param string      $default_role Role used otherwise, slug or display name.
	 * @param string[]    $warnings     Collects warnings.
	 * @return string|WP_Error Role slug; 400 wpsb_invalid_args or 403 wpsb_role_forbidden when
	 *                         default_role itself cannot be used.
	 */
	public static function for_new_user( $role, $default_role, array &$warnings ) {
		$refused = null;
		if ( null !== $role ) {
			$slug = self::grantable_slug( $role, $refused );
			if ( null !== $slug ) {
				return $slug;
			}
		}
		$default = wpsb_role_slug( $default_role );
		if ( null === $default ) {
			return wpsb_invalid_arg( 'default_role', sprintf( 'the site has no role "%s".', $default_role ) );
		}
		$why = self::refusal( $default );
		if ( null !== $why ) {
			return new WP_Error(
				'wpsb_role_forbidden',
				sprintf( 'Invalid argument "default_role": the role "%s" cannot be assigned: %s.', $default, $why ),
				array(
					'status' => 403,
					'field'  => 'default_role',
					'role'   => $default,
				)
			);
		}
		if ( null !== $refused ) {
			$warnings[] = sprintf( '%s; using "%s".', $refused, $default );
		}
		return $default;
	}

	/**
	 * The requested role for an existing user when it may be granted; null (with a warning) when
	 * it may not: the user keeps their roles. The caller's promote_user is checked by the caller.
	 *
	 * @param string   $role     Requested role, slug or display name.
	 * @param string[] $warnings Collects warnings.
	 * @return string|null Role slug.
	 */
	public static function for_existing_user( $role, array &$warnings ) {
		$refused = null;
		$slug    = self::grantable_slug( $role, $refused );
		if ( null === $slug ) {
			$warnings[] = $refused . '; the role is left as it is.';
		}
		return $slug;
	}

	/**
	 * The slug of a requested role if it exists and may be granted; null otherwise, with the
	 * reason in $refused.
	 *
	 * @param string      $role    Slug or display name.
	 * @param string|null $refused Set to why the role is refused.
	 * @return string|null
	 */
	private static function grantable_slug( $role, &$refused ) {
		$slug = wpsb_role_slug( $role );
		if ( null === $slug ) {
			$refused = sprintf( 'role "%s" does not exist on this site', $role );
			return null;
		}
		$why = self::refusal( $slug );
		if ( null !== $why ) {
			$refused = sprintf( 'role "%s" is not granted (%s)', $slug, $why );
			return null;
		}
		return $slug;
	}

	/**
	 * The site's editable roles (get_editable_roles() lives in an admin include).
	 *
	 * @return array Slug => role details.
	 */
	private static function editable_roles() {
		require_once ABSPATH . 'wp-admin/includes/user.php';
		return get_editable_roles();
	}
}

/**
 * The least-privilege role for the bridge's own WordPress user: exactly the capabilities the
 * bridge needs, kept so on every request (init). With it the bridge's credentials, if they leak,
 * cannot assign a privileged role, nor edit, promote or delete a privileged user, through this
 * plugin or through core (wp-admin, core REST).
 */
final class WPSB_Bridge_Role {

	const SLUG = 'wpsb_bridge';
	const NAME = 'WP Sync Bridge';

	/** What the bridge needs: find users, create them, update them, set their roles. */
	const CAPABILITIES = array( 'read', 'list_users', 'create_users', 'edit_users', 'promote_users' );

	/** wp-config.php constant: true adds delete_users, for connections with delete_policy "delete". */
	const DELETE_CONSTANT = 'WPSB_BRIDGE_CAN_DELETE_USERS';

	/** Meta capabilities on another user that the bridge role never has on a privileged user. */
	const GUARDED_META_CAPS = array( 'edit_user', 'delete_user', 'promote_user', 'remove_user' );

	/**
	 * The role's capabilities.
	 *
	 * @return array<string, bool>
	 */
	public static function capabilities() {
		$caps = array_fill_keys( self::CAPABILITIES, true );
		if ( defined( self::DELETE_CONSTANT ) && true === constant( self::DELETE_CONSTANT ) ) {
			$caps['delete_users'] = true;
		}
		ksort( $caps );
		return $caps;
	}

	/**
	 * Create the role, or reset it when its capabilities differ (added by hand, or from an older
	 * version). Writes only when something differs.
	 *
	 * @return void
	 */
	public static function ensure() {
		$want = self::capabilities();
		$role = get_role( self::SLUG );
		if ( $role ) {
			$have = array_filter( (array) $role->capabilities );
			ksort( $have );
			if ( $have === $want ) {
				return;
			}
			remove_role( self::SLUG );
		}
		add_role( self::SLUG, self::NAME, $want );
	}

	/**
	 * Whether a user has the bridge role.
	 *
	 * @param WP_User $user User.
	 * @return bool
	 */
	public static function has_role( WP_User $user ) {
		return in_array( self::SLUG, (array) $user->roles, true );
	}

	/**
	 * editable_roles filter: a bridge user may assign only roles that are not privileged.
	 *
	 * @param array $roles Slug => role details.
	 * @return array
	 */
	public static function filter_editable_roles( $roles ) {
		$user = wp_get_current_user();
		if ( ! $user->exists() || ! self::has_role( $user ) || ! is_array( $roles ) ) {
			return $roles;
		}
		foreach ( array_keys( $roles ) as $slug ) {
			if ( WPSB_Privilege::role_is_privileged( (string) $slug ) ) {
				unset( $roles[ $slug ] );
			}
		}
		return $roles;
	}

	/**
	 * map_meta_cap filter: a bridge user cannot edit, promote, remove or delete a privileged user
	 * (its own profile excepted), wherever it asks.
	 *
	 * @param string[] $caps    Primitive capabilities required.
	 * @param string   $cap     Capability asked.
	 * @param int      $user_id Acting user.
	 * @param array    $args    $args[0]: the target user ID.
	 * @return string[]
	 */
	public static function filter_meta_cap( $caps, $cap, $user_id, $args ) {
		if ( ! in_array( $cap, self::GUARDED_META_CAPS, true ) || empty( $args[0] ) ) {
			return $caps;
		}
		if ( (int) $args[0] === (int) $user_id ) {
			return $caps; // Its own profile.
		}
		$actor = get_userdata( $user_id );
		if ( ! $actor || ! self::has_role( $actor ) ) {
			return $caps;
		}
		$target = get_userdata( (int) $args[0] );
		if ( $target && WPSB_Privilege::is_protected_user( $target ) ) {
			$caps[] = 'do_not_allow';
		}
		return $caps;
	}
}

add_action( 'init', array( 'WPSB_Bridge_Role', 'ensure' ) );
add_filter( 'editable_roles', array( 'WPSB_Bridge_Role', 'filter_editable_roles' ) );
add_filter( 'map_meta_cap', array( 'WPSB_Bridge_Role', 'filter_meta_cap' ), 10, 4 );

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
	$sql = wpsb_user_id_by_email_sql( $email );
	return null === $sql ? 0 : (int) $wpdb->get_var( $sql ); // phpcs:ignore WordPress.DB.PreparedSQL.NotPrepared
}

/**
 * The query behind wpsb_find_user_id_by_email(): one row, MIN(ID), NULL when none.
 *
 * @param string $email Email address.
 * @return string|null Prepared SQL; null for an empty email.
 */
function wpsb_user_id_by_email_sql( $email ) {
	global $wpdb;
	$email = trim( $email );
	if ( '' === $email ) {
		return null;
	}
	// The first condition uses the user_email index (case-insensitive collation); the second
	// makes the match exact apart from case.
	return $wpdb->prepare(
		// MIN() rather than ORDER BY ID LIMIT 1, which can make MariaDB walk the primary key.
		"SELECT MIN(ID) FROM {$wpdb->users} WHERE user_email = %s AND BINARY LOWER(user_email) = BINARY LOWER(%s)",
		$email,
		$email
	);
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
	return (int) $wpdb->get_var( wpsb_user_id_by_meta_sql( $key, $value ) ); // phpcs:ignore WordPress.DB.PreparedSQL.NotPrepared
}

/**
 * The query behind wpsb_find_user_id_by_meta(): one row, MIN(user_id), NULL when none.
 *
 * @param string $key   Meta key.
 * @param string $value Contact ID.
 * @return string Prepared SQL.
 */
function wpsb_user_id_by_meta_sql( $key, $value ) {
	global $wpdb;
	if ( wpsb_contact_indexed( $key, $value ) ) {
		$table = wpsb_contacts_table();
		return $wpdb->prepare(
			"SELECT MIN(c.user_id) FROM {$table} c JOIN {$wpdb->users} u ON u.ID = c.user_id WHERE c.meta_key = %s AND c.contact_id = %s",
			$key,
			$value
		);
	}
	return $wpdb->prepare(
		// MIN() rather than ORDER BY ... LIMIT 1: with ORDER BY, MariaDB walks the user_id index
		// over the whole usermeta table on a miss; MIN() keeps it on the meta_key index.
		"SELECT MIN(m.user_id) FROM {$wpdb->usermeta} m JOIN {$wpdb->users} u ON u.ID = m.user_id WHERE m.meta_key = %s AND m.meta_value = BINARY %s",
		$key,
		$value
	);
}

/**
 * The user the lookup query finds (a query of one row holding one user ID, or NULL), read in
 * the same query: the row get_userdata() would read next is cached the way it caches it
 * (update_user_caches(), which keeps an entry already cached), so a found user costs one
 * query fewer, read at the same moment.
 *
 * @param string|null $id_sql Prepared lookup query (null: nobody).
 * @return WP_User|null
 */
function wpsb_user_found_by( $id_sql ) {
	global $wpdb;
	if ( null === $id_sql ) {
		return null;
	}
	$row = WPSB_Batch_Prime::row_found_by( $id_sql );
	if ( null === $row ) {
		// The scalar subquery runs once; the row is then read by its primary key.
		$row = $wpdb->get_row( "SELECT * FROM {$wpdb->users} WHERE ID = ({$id_sql})" ); // phpcs:ignore WordPress.DB.PreparedSQL.NotPrepared
	}
	if ( ! $row ) {
		return null;
	}
	update_user_caches( $row );
	$user = get_userdata( (int) $row->ID );
	return $user ? $user : null;
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
 * Whether the lookup of this contact ID goes through the contact index.
 *
 * @param string $key   Meta key.
 * @param string $value Contact ID.
 * @return bool
 */
function wpsb_contact_indexed( $key, $value ) {
	return wpsb_contact_index_ready() && wpsb_is_contact_key( $key ) && wpsb_fits_index( $value );
}

/**
 * Whether a contact ID fits the index's column: at most 191 characters. A character is at least
 * one byte, so a value of at most 191 bytes fits without counting its characters. Counting them
 * (mb_strlen) is what costs: without PHP's mbstring extension (Debian's wordpress package only
 * suggests it) WordPress's stand-in reads an option and runs a regex on every call, 12% of the
 * CPU a batch of 100 unchanged users took (two calls per item).
 *
 * @param string $value Contact ID.
 * @return bool
 */
function wpsb_fits_index( $value ) {
	return strlen( $value ) <= 191 || mb_strlen( $value ) <= 191;
}

/**
 * Whether the contact index exists (created by wpsb_install_contact_index()).
 *
 * @return bool
 */
function wpsb_contact_index_ready() {
	static $ready = false; // Once there, it stays (the table is only dropped on uninstall).
	if ( ! $ready ) {
		$ready = (int) get_option( 'wpsb_schema_version', 0 ) >= WPSB_SCHEMA_VERSION;
	}
	return $ready;
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
	$want  = array();
	foreach ( get_user_meta( $user_id, $key, false ) as $value ) {
		if ( is_scalar( $value ) && '' !== (string) $value && wpsb_fits_index( (string) $value ) ) {
			$want[] = (string) $value;
		}
	}
	// Read the user's rows (a plain read: no locks), then delete and add rows by their whole
	// primary key. A DELETE by meta key and user walked the primary key (meta_key, contact_id,
	// user_id) over every contact under the key, locking other users' rows: two batches writing
	// contact IDs of different users deadlocked on it.
	$have = array_map(
		'strval',
		$wpdb->get_col( $wpdb->prepare( "SELECT contact_id FROM {$table} WHERE user_id = %d AND meta_key = %s", $user_id, $key ) ) // phpcs:ignore WordPress.DB.PreparedSQL.InterpolatedNotPrepared
	);
	foreach ( array_diff( $have, $want ) as $gone ) {
		$wpdb->query( $wpdb->prepare( "DELETE FROM {$table} WHERE meta_key = %s AND contact_id = %s AND user_id = %d", $key, $gone, $user_id ) ); // phpcs:ignore WordPress.DB.PreparedSQL.InterpolatedNotPrepared
	}
	foreach ( array_unique( array_diff( $want, $have ) ) as $value ) {
		$wpdb->query( $wpdb->prepare( "INSERT IGNORE INTO {$table} (meta_key, contact_id, user_id) VALUES (%s, %s, %d)", $key, $value, $user_id ) ); // phpcs:ignore WordPress.DB.PreparedSQL.InterpolatedNotPrepared
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
		$user = wpsb_user_found_by( wpsb_user_id_by_meta_sql( $contact_id_key, $contact_id ) );
		if ( $user ) {
			return array(
				'user'       => $user,
				'matched_by' => 'contact_id',
			);
		}
	}
	if ( null !== $email ) {
		$user = wpsb_user_found_by( wpsb_user_id_by_email_sql( $email ) );
		if ( $user ) {
			return array(
				'user'       => $user,
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
	// Both unslash their value, so slash it first to keep backslashes. A key the followed copy
	// does not have is added: update_user_meta() would first look for its rows.
	if ( WPSB_Meta_Cache::known_absent( $user_id, $key ) ) {
		add_user_meta( $user_id, $key, wp_slash( $value ) );
	} else {
		update_user_meta( $user_id, $key, wp_slash( $value ) );
	}
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
 * Take the locks of several emails in one query, in the order given (sorted by the caller, so
 * two batches never wait on each other), each waiting up to WPSB_LOCK_TIMEOUT_S seconds.
 *
 * @param string[] $emails Normalised email addresses.
 * @return array<string, true|WP_Error> Email => true, or 503 wpsb_lock_timeout.
 */
function wpsb_acquire_locks( array $emails ) {
	global $wpdb;
	if ( ! $emails ) {
		return array();
	}
	$calls = implode( ', ', array_fill( 0, count( $emails ), "GET_LOCK(CONCAT('wpsb:', MD5(%s)), %d)" ) );
	$args  = array();
	foreach ( $emails as $email ) {
		array_push( $args, wpsb_normalize_email( $email ), WPSB_LOCK_TIMEOUT_S );
	}
	$row = $wpdb->get_row( $wpdb->prepare( "SELECT $calls", $args ), ARRAY_N ); // phpcs:ignore WordPress.DB.PreparedSQL.InterpolatedNotPrepared
	$out = array();
	foreach ( array_values( $emails ) as $i => $email ) {
		$out[ $email ] = isset( $row[ $i ] ) && '1' === (string) $row[ $i ] ? true : new WP_Error(
			'wpsb_lock_timeout',
			'Another request for the same email is still running; try again.',
			array( 'status' => 503 )
		);
	}
	return $out;
}

/**
 * Release the locks of several emails in one query.
 *
 * @param string[] $emails Email addresses.
 * @return void
 */
function wpsb_release_locks( array $emails ) {
	global $wpdb;
	if ( ! $emails ) {
		return;
	}
	$calls = implode( ', ', array_fill( 0, count( $emails ), "RELEASE_LOCK(CONCAT('wpsb:', MD5(%s)))" ) );
	$wpdb->query( $wpdb->prepare( "SELECT $calls", array_map( 'wpsb_normalize_email', array_values( $emails ) ) ) ); // phpcs:ignore WordPress.DB.PreparedSQL.InterpolatedNotPrepared
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
 * Versions of the plugin, its API, WordPress and PHP; who the caller is (so the bridge can warn
 * about an administrator or a missing capability); the policy's settings.
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
		/**
		 * Filters the optional features the plugin advertises (a site may turn the batch off).
		 *
		 * @param string[] $features Feature names.
		 */
		'features'          => array_values( (array) apply_filters( 'wpsb_features', WPSB_FEATURES ) ),
		'batch'             => array(
			'max_items'     => WPSB_BATCH_MAX_ITEMS,
			'max_passwords' => WPSB_BATCH_MAX_PASSWORDS,
		),
		'caller'            => wpsb_caller_summary( wp_get_current_user() ),
		'policy'            => array(
			'bridge_role'              => WPSB_Bridge_Role::SLUG,
			'managed_privileged_roles' => WPSB_Privilege::managed_roles(),
		),
	);
}

/**
 * What the calling user is, measured against what the bridge needs.
 *
 * @param WP_User $user The caller.
 * @return array {user_id, login, roles, is_administrator, has_bridge_role,
 *               missing_capabilities, excess_capabilities, grantable_roles}
 */
function wpsb_caller_summary( WP_User $user ) {
	$needed  = array_keys( WPSB_Bridge_Role::capabilities() );
	$missing = array();
	foreach ( array( 'list_users', 'create_users', 'edit_users', 'promote_users' ) as $cap ) {
		if ( ! current_user_can( $cap ) ) {
			$missing[] = $cap;
		}
	}
	$excess = array();
	foreach ( WPSB_Privilege::CAPABILITIES as $cap ) {
		if ( ! empty( $user->allcaps[ $cap ] ) && ! in_array( $cap, $needed, true ) && 'delete_users' !== $cap ) {
			$excess[] = $cap;
		}
	}
	return array(
		'user_id'              => (int) $user->ID,
		'login'                => (string) $user->user_login,
		'roles'                => array_values( (array) $user->roles ),
		'is_administrator'     => in_array( 'administrator', (array) $user->roles, true )
			|| ! empty( $user->allcaps['manage_options'] ) || ( is_multisite() && is_super_admin( $user->ID ) ),
		'has_bridge_role'      => WPSB_Bridge_Role::has_role( $user ),
		'missing_capabilities' => $missing,
		'excess_capabilities'  => $excess,
		'grantable_roles'      => WPSB_Role_Grants::grantable_roles(),
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
 * Privileged users are never touched. Safe to repeat: a user already gone is "no_user".
 *
 * @param array $args email and/or contact_id + contact_id_key; policy (remove_roles|delete);
 *                    reassign_to (user ID, required for delete).
 * @return array|WP_Error {outcome: roles_removed|deleted|unchanged|skipped_privileged|no_user, user_id, warnings}
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
	if ( WPSB_Privilege::is_protected_user( $user ) ) {
		return wpsb_delete_result( 'skipped_privileged', $user->ID, array( wpsb_privileged_warning( $user ) ) );
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
	foreach ( array( 'contact_id_key', 'tags_key' ) as $field ) {
		$ok = null === $q[ $field ] ? true : WPSB_Meta_Keys::check( $field, $q[ $field ] );
		if ( is_wp_error( $ok ) ) {
			return $ok;
		}
	}
	foreach ( $q['meta_keys'] as $key ) {
		$ok = WPSB_Meta_Keys::check( 'meta_keys', $key );
		if ( is_wp_error( $ok ) ) {
			return $ok;
		}
	}
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
		'set_password'        => false,
		'send_notification'   => false,
		'create'              => true,
		'notify_email_change' => true,
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
		$ok = WPSB_Meta_Keys::check( 'meta', (string) $key );
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
		$ok = WPSB_Meta_Keys::check( $field, $a[ $field ] );
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
	if ( $found['user'] && WPSB_Privilege::is_protected_user( $found['user'] ) ) {
		// Nothing is written: not the email, login, password, roles, meta, tags or contact ID.
		$warnings = array( wpsb_privileged_warning( $found['user'] ) );
		return wpsb_upsert_result( $found['user'], 'skipped_privileged', array(), $warnings );
	}
	if ( $found['user'] ) {
		return wpsb_update_user( $found['user'], $found['matched_by'], $a );
	}
	if ( ! $a['create'] ) {
		return wpsb_upsert_result( null, 'no_user', array(), array() );
	}
	return wpsb_create_user( $a );
}

/**
 * The warning of a skipped privileged user.
 *
 * @param WP_User $user User.
 * @return string
 */
function wpsb_privileged_warning( WP_User $user ) {
	return sprintf(
		'user %d can administer users or the site; the plugin never modifies such a user (wordpress/SECURITY.md).',
		$user->ID
	);
}

/**
 * The upsert answer.
 *
 * @param WP_User|null $user     User (null for no_user).
 * @param string       $outcome  created|updated|unchanged|no_user|skipped_privileged.
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
	// Nor another account's email: the login form takes either, and would pick this account.
	for ( $i = 1; username_exists( $login ) || email_exists( $login ) || wpsb_login_is_illegal( $login ); $i++ ) {
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
	// Every new user gets a role (default_role at least), and assigning one needs promote_users.
	$auth = wpsb_authorize( array( 'create_users', 'promote_users' ) );
	if ( is_wp_error( $auth ) ) {
		return $auth;
	}
	$warnings = array();
	$role     = WPSB_Role_Grants::for_new_user( $a['role'], $a['default_role'], $warnings );
	if ( is_wp_error( $role ) ) {
		return $role;
	}
	$userdata = array(
		'user_login' => wpsb_unique_login( null === $a['login'] ? $a['email'] : $a['login'] ),
		'user_email' => $a['email'],
		'user_pass'  => null === $a['password'] ? '' : $a['password'],
		'role'       => $role,
	);
	$changed  = array( 'email', 'login', 'role' );
	foreach ( array( 'first_name', 'last_name', 'display_name' ) as $field ) {
		if ( null !== $a[ $field ] ) {
			$userdata[ $field ] = $a[ $field ];
			$changed[]          = $field;
		}
	}
	// wp_insert_user() expects slashed data, as core's REST controller passes it.
	WPSB_Meta_Cache::follow_new( true );
	try {
		$user_id = null === $a['password']
			? WPSB_Unusable_Password::insert_user( wp_slash( $userdata ) )
			: wp_insert_user( wp_slash( $userdata ) );
		if ( is_wp_error( $user_id ) ) {
			return wpsb_wrap_user_error( $user_id, 'wpsb_create_failed' );
		}
		if ( null !== $a['request_id'] ) {
			add_user_meta( $user_id, WPSB_REQUEST_ID_META, wp_slash( $a['request_id'] ) );
		}
		wpsb_apply_meta( $user_id, $a, $changed );
	} finally {
		WPSB_Meta_Cache::stop();
	}
	if ( $a['send_notification'] ) {
		wp_new_user_notification( $user_id, null, 'user' );
	}
	return wpsb_upsert_result( get_userdata( $user_id ), 'created', $changed, $warnings );
}

/**
 * A new user whose password nobody knows (no password given: the CRM has none and the bridge
 * writes none back) gets an unusable value in user_pass instead of the hash of a throwaway one.
 * Nobody can log in with either; the ways in (the welcome mail's set-password link, "Lost your
 * password?") go through get_password_reset_key(), which never reads user_pass, and the password
 * the user then chooses is hashed once, when it is set. What it saves: WordPress 6.8 hashes with
 * bcrypt (cost 10: 50-70 ms of CPU here, more than the rest of a create; README.md).
 *
 * The value is "*" and 31 random letters and digits: wp_check_password() compares a value of at
 * most 32 characters to the MD5 of the password in hex (6.1 and 6.8 alike), which never contains
 * "*"; random per user, so the auth cookie's password fragment differs between users and changes
 * with the first real password. It is put in place by the $wp_hasher override that core's
 * wp_hash_password() honours before anything else (both lines), for the one call
 * wp_insert_user() makes first on a create, and only when wp_hash_password() is core's own (a
 * site that replaced it keeps hashing a throwaway password, as before).
 */
final class WPSB_Unusable_Password {

	/** @var mixed The $wp_hasher this one stands in for (restored at its first use). */
	private $previous;

	/**
	 * @param mixed $previous The $wp_hasher in place before.
	 */
	private function __construct( $previous ) {
		$this->previous = $previous;
	}

	/**
	 * wp_insert_user() for a new user, with an unusable password.
	 *
	 * @param array $userdata Slashed user data, user_pass empty.
	 * @return int|WP_Error
	 */
	public static function insert_user( array $userdata ) {
		global $wp_hasher;
		if ( ! self::core_hashes() ) {
			$userdata['user_pass'] = wp_slash( wp_generate_password( 24 ) );
			return wp_insert_user( $userdata );
		}
		$previous  = isset( $wp_hasher ) ? $wp_hasher : null;
		$wp_hasher = new self( $previous ); // phpcs:ignore WordPress.WP.GlobalVariablesOverride.Prohibited
		try {
			return wp_insert_user( $userdata );
		} finally {
			if ( $wp_hasher instanceof self ) { // wp_insert_user() failed before hashing
				$wp_hasher = $previous; // phpcs:ignore WordPress.WP.GlobalVariablesOverride.Prohibited
			}
		}
	}

	/**
	 * Whether wp_hash_password() is core's (which asks $wp_hasher first), not a plugin's.
	 *
	 * @return bool
	 */
	private static function core_hashes() {
		$file = ( new ReflectionFunction( 'wp_hash_password' ) )->getFileName();
		return realpath( $file ) === realpath( ABSPATH . WPINC . '/pluggable.php' );
	}

	/**
	 * The one hash asked for: the unusable value; the previous hasher is back in place.
	 *
	 * @param string $password Ignored (empty).
	 * @return string
	 */
	// phpcs:ignore WordPress.NamingConventions.ValidFunctionName
	public function HashPassword( $password ) {
		unset( $password );
		$this->restore();
		return '*' . wp_generate_password( 31, false );
	}

	/**
	 * Never asked for on a create; refuses (and steps aside) if it is.
	 *
	 * @param string $password Password.
	 * @param string $hash     Hash.
	 * @return bool
	 */
	// phpcs:ignore WordPress.NamingConventions.ValidFunctionName
	public function CheckPassword( $password, $hash ) {
		unset( $password, $hash );
		$this->restore();
		return false;
	}

	/**
	 * Put the previous $wp_hasher back.
	 *
	 * @return void
	 */
	private function restore() {
		global $wp_hasher;
		$wp_hasher = $this->previous; // phpcs:ignore WordPress.WP.GlobalVariablesOverride.Prohibited
	}
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
	WPSB_Meta_Cache::follow( $user->ID );
	try {
		return wpsb_update_followed( $user, $matched_by, $a );
	} finally {
		WPSB_Meta_Cache::stop();
	}
}

/**
 * wpsb_update_user() once the user's meta is followed (WPSB_Meta_Cache).
 *
 * @param WP_User $user       User found.
 * @param string  $matched_by contact_id|email.
 * @param array   $a          Parsed arguments.
 * @return array|WP_Error
 */
function wpsb_update_followed( WP_User $user, $matched_by, array $a ) {
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
		$saved = wpsb_save_core_fields( $user->ID, $core, $a['notify_email_change'] );
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
 * Save core fields with wp_update_user(). WordPress's "email changed" notice goes to the old
 * address unless $notify_email_change is false (the user learns of a change they did not make);
 * the "password changed" mail is never sent (the CRM sets passwords).
 *
 * @param int   $user_id             User ID.
 * @param array $core                Field => value.
 * @param bool  $notify_email_change Whether to send the "email changed" notice.
 * @return true|WP_Error
 */
function wpsb_save_core_fields( $user_id, array $core, $notify_email_change ) {
	add_filter( 'send_password_change_email', '__return_false', 999 );
	if ( ! $notify_email_change ) {
		add_filter( 'send_email_change_email', '__return_false', 999 );
	}
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
	$slug = wpsb_role_slug( $a['role'] );
	if ( null !== $slug && array( $slug ) === array_values( $user->roles ) ) {
		return null;
	}
	$auth = wpsb_authorize( array( 'promote_user' ), $user->ID );
	if ( is_wp_error( $auth ) ) {
		return wpsb_forbidden_as( $auth, 'promote_users' );
	}
	return WPSB_Role_Grants::for_existing_user( $a['role'], $warnings );
}

/*
 * ---------------------------------------------------------------------------------------------
 * Meta cache kept in step with the plugin's own writes
 *
 * Each update_user_meta() deletes the user's whole meta cache, and the next meta call reads all
 * of the user's meta again: a create read it 19 times (wp_insert_user()'s own keys, then the
 * plugin's). While the plugin writes a user (wpsb_create_user(), wpsb_update_user()) it follows
 * that user: after each write through the meta API it puts back the cache as the database now
 * holds it, so the meta is read at most once per user and item.
 * ---------------------------------------------------------------------------------------------
 */

/**
 * Follows users' meta during the plugin's writes (see above). Every write through the meta API
 * fires an added/updated/deleted action after deleting the cache; the matching handler here
 * runs first and sets the cache to the followed copy with that write applied. Anything it cannot
 * reproduce exactly (a delete, several rows under one key, a float or null value, text that is
 * not valid UTF-8) stops following the user, and the next read loads the meta from the database
 * as it would have. Meta written with raw SQL is not seen (as anywhere in WordPress's cache).
 */
final class WPSB_Meta_Cache {

	/** @var array<int, array> User ID => meta as update_meta_cache() caches it (key => raw values). */
	private static $followed = array();

	/** @var bool Whether the user wp_insert_user() is about to create is to be followed. */
	private static $follow_new = false;

	/**
	 * Hook the handlers (once, at load).
	 *
	 * @return void
	 */
	public static function register() {
		add_action( 'added_user_meta', array( __CLASS__, 'added' ), PHP_INT_MIN, 4 );
		add_action( 'updated_user_meta', array( __CLASS__, 'updated' ), PHP_INT_MIN, 4 );
		add_action( 'deleted_user_meta', array( __CLASS__, 'deleted' ), PHP_INT_MIN, 2 );
		add_filter( 'insert_user_meta', array( __CLASS__, 'inserting' ), PHP_INT_MIN, 3 );
		add_filter( 'update_user_metadata', array( __CLASS__, 'add_if_absent' ), PHP_INT_MAX, 4 );
	}

	/**
	 * Follow a user from now on (their meta loaded once if it is not cached).
	 *
	 * @param int $user_id User ID.
	 * @return void
	 */
	public static function follow( $user_id ) {
		$user_id = (int) $user_id;
		$cached  = wp_cache_get( $user_id, 'user_meta' );
		if ( ! is_array( $cached ) ) {
			update_meta_cache( 'user', array( $user_id ) );
			$cached = wp_cache_get( $user_id, 'user_meta' );
		}
		self::$followed[ $user_id ] = is_array( $cached ) ? $cached : array();
	}

	/**
	 * Follow the user the next wp_insert_user() creates.
	 *
	 * @param bool $on Whether to.
	 * @return void
	 */
	public static function follow_new( $on ) {
		self::$follow_new = (bool) $on;
	}

	/**
	 * Stop following one user, or everyone.
	 *
	 * @param int|null $user_id User ID; null for all.
	 * @return void
	 */
	public static function stop( $user_id = null ) {
		if ( null === $user_id ) {
			self::$followed   = array();
			self::$follow_new = false;
			return;
		}
		unset( self::$followed[ (int) $user_id ] );
	}

	/**
	 * Whether a followed user has no meta under $key (unknown users: false).
	 *
	 * @param int    $user_id User ID.
	 * @param string $key     Meta key.
	 * @return bool
	 */
	public static function known_absent( $user_id, $key ) {
		if ( ! isset( self::$followed[ (int) $user_id ] ) ) {
			return false;
		}
		// As MySQL compares keys: a row under "First_Name" is the row of "first_name" there.
		$wanted = WPSB_Meta_Keys::mysql_form( $key );
		foreach ( array_keys( self::$followed[ (int) $user_id ] ) as $have ) {
			if ( WPSB_Meta_Keys::mysql_form( (string) $have ) === $wanted ) {
				return false;
			}
		}
		return true;
	}

	/**
	 * insert_user_meta filter: a user wp_insert_user() just created has no meta yet.
	 *
	 * @param array   $meta   Meta about to be written.
	 * @param WP_User $user   User.
	 * @param bool    $update Whether an existing user is updated.
	 * @return array
	 */
	public static function inserting( $meta, $user, $update ) {
		if ( self::$follow_new && ! $update && $user instanceof WP_User ) {
			self::$follow_new = false;
			self::follow( $user->ID );
		}
		if ( $user instanceof WP_User && isset( self::$followed[ (int) $user->ID ] ) && is_array( $meta ) ) {
			// As the database gives them back: use_ssl is passed as the integer 0, which is never
			// identical to the stored "0", so every wp_update_user() wrote it again unchanged.
			foreach ( $meta as $key => $value ) {
				if ( is_int( $value ) || is_bool( $value ) ) {
					$meta[ $key ] = self::stored_form( $value );
				}
			}
		}
		return $meta;
	}

	/**
	 * update_user_metadata filter: for a key a followed user does not have, add the row at once,
	 * as update_metadata() itself would after looking for existing rows (one query fewer per key).
	 *
	 * @param null|bool $check   Null unless another filter decided.
	 * @param int       $user_id User ID.
	 * @param string    $key     Meta key (unslashed).
	 * @param mixed     $value   Value (unslashed, sanitised).
	 * @return null|int|false Null: let update_metadata() go on; else add_metadata()'s result.
	 */
	public static function add_if_absent( $check, $user_id, $key, $value ) {
		if ( null !== $check || ! self::known_absent( $user_id, $key ) ) {
			return $check;
		}
		// add_metadata() unslashes (and sanitises) again, as update_metadata() passes it the raw value.
		return add_metadata( 'user', (int) $user_id, wp_slash( $key ), wp_slash( $value ) );
	}

	/**
	 * added_user_meta action: one row more.
	 *
	 * @param int    $meta_id Meta ID.
	 * @param int    $user_id User ID.
	 * @param string $key     Meta key.
	 * @param mixed  $value   Value (unslashed, not serialised).
	 * @return void
	 */
	public static function added( $meta_id, $user_id, $key, $value ) {
		$user_id = (int) $user_id;
		if ( isset( self::$followed[ $user_id ] ) ) {
			self::apply( $user_id, $key, $value, true );
		}
	}

	/**
	 * updated_user_meta action (once per row updated).
	 *
	 * @param int    $meta_id Meta ID.
	 * @param int    $user_id User ID.
	 * @param string $key     Meta key.
	 * @param mixed  $value   Value (unslashed, not serialised).
	 * @return void
	 */
	public static function updated( $meta_id, $user_id, $key, $value ) {
		$user_id = (int) $user_id;
		if ( isset( self::$followed[ $user_id ] ) ) {
			self::apply( $user_id, $key, $value, false );
		}
	}

	/**
	 * deleted_user_meta action: stop following (which rows went is not known here).
	 *
	 * @param mixed $meta_ids Meta IDs.
	 * @param int   $user_id  User ID.
	 * @return void
	 */
	public static function deleted( $meta_ids, $user_id ) {
		self::stop( $user_id );
	}

	/**
	 * Apply one write to the followed copy and put it in the cache, or stop following.
	 *
	 * @param int    $user_id User ID.
	 * @param string $key     Meta key.
	 * @param mixed  $value   Value written.
	 * @param bool   $added   A new row (else an update of the only row).
	 * @return void
	 */
	private static function apply( $user_id, $key, $value, $added ) {
		$raw  = self::stored_form( $value );
		$rows = self::$followed[ $user_id ][ $key ] ?? array();
		if ( null === $raw || ( ! $added && 1 !== count( $rows ) ) ) {
			self::stop( $user_id );
			return;
		}
		self::$followed[ $user_id ][ $key ] = $added ? array_merge( $rows, array( $raw ) ) : array( $raw );
		wp_cache_set( $user_id, self::$followed[ $user_id ], 'user_meta' );
	}

	/**
	 * The value as the database gives it back (what update_meta_cache() would cache), or null
	 * when that is not certain.
	 *
	 * @param mixed $value Value written.
	 * @return string|null
	 */
	private static function stored_form( $value ) {
		if ( null === $value || is_float( $value ) || is_resource( $value ) ) {
			return null;
		}
		$stored = maybe_serialize( $value );
		if ( is_bool( $stored ) ) {
			return $stored ? '1' : '';
		}
		$stored = (string) $stored;
		return wp_check_invalid_utf8( $stored ) === $stored ? $stored : null;
	}
}

WPSB_Meta_Cache::register();

/*
 * ---------------------------------------------------------------------------------------------
 * Batch upsert: many users in one request, one transaction where safe
 *
 * One request per user pays WordPress's bootstrap (9-11 ms CPU here) every time, and each
 * autocommitted write its own log flush; a batch pays them once (measurements:
 * ../shared/reference/wordpress-throughput.md). Every item goes through the single upsert's own
 * code (wpsb_upsert_locked()), so each security rule holds for it unchanged.
 * ---------------------------------------------------------------------------------------------
 */

/**
 * The users a batch will find, read before its items run: one query looks up every item (each
 * item's own lookup queries, by contact ID and by email, in a UNION), one reads the users' rows,
 * two lock and read their meta; instead of two queries per item. A batch of 50 unchanged users
 * costs WordPress ~20% less CPU (bench/profile_sync.py).
 *
 * The rows and the meta rows are read with FOR UPDATE inside the batch's transaction: until its
 * COMMIT nobody can change them (a role change waits for the batch), so what every security check
 * of the batch reads stays what the database holds, however late in the batch the item runs. A
 * lookup's answer is used only by the lookup with the same SQL, and only until an item of the
 * batch writes that user (its row and meta then come from WordPress's own cache, as before); a
 * lookup that found nobody runs again when its item asks (a user made since is found). Not on a
 * network: there a user's privileges on other sites are meta rows that a site can add, which no
 * lock taken here covers, so each item reads them itself, as a single upsert does.
 */
final class WPSB_Batch_Prime {

	/** @var array<string, int> Lookup SQL => user ID it found (while a batch runs). */
	private static $found = array();

	/** @var array<int, object> User ID => users row, read FOR UPDATE. */
	private static $rows = array();

	/** Actions after which the user they name is read again (a meta row written). */
	const META_WRITES = array( 'added_user_meta', 'updated_user_meta', 'deleted_user_meta' );

	/**
	 * Look up, lock and cache the users of the items about to run.
	 *
	 * @param array $pending Position => parsed arguments.
	 * @return void
	 */
	public static function start( array $pending ) {
		global $wpdb;
		self::stop();
		if ( is_multisite() || count( $pending ) < 2 ) {
			return;
		}
		$emails   = array(); // Lookup SQL => email.
		$contacts = array(); // Lookup SQL => array( meta key, contact ID ), through the index.
		$others   = array(); // Lookup SQL, run as it is.
		foreach ( $pending as $a ) {
			if ( null !== $a['contact_id'] && '' !== $a['contact_id'] && null !== $a['contact_id_key'] ) {
				$sql = wpsb_user_id_by_meta_sql( $a['contact_id_key'], $a['contact_id'] );
				if ( wpsb_contact_indexed( $a['contact_id_key'], $a['contact_id'] )
					&& self::plain_utf8( $a['contact_id_key'] ) && self::plain_utf8( $a['contact_id'] ) ) {
					$contacts[ $sql ] = array( $a['contact_id_key'], $a['contact_id'] );
				} else {
					$others[] = $sql;
				}
			}
			$sql = wpsb_user_id_by_email_sql( $a['email'] );
			if ( null !== $sql && self::plain_utf8( trim( $a['email'] ) ) ) {
				$emails[ $sql ] = trim( $a['email'] );
			} elseif ( null !== $sql ) {
				$others[] = $sql;
			}
		}
		$found = self::found_by_email( $emails ) + self::found_by_contact( $contacts )
			+ self::found_as_is( $others );
		$ids   = array_values( array_unique( $found ) );
		if ( ! $ids ) {
			return;
		}
		sort( $ids );
		$list = implode( ',', $ids );
		// phpcs:disable WordPress.DB.PreparedSQL.NotPrepared -- integers only.
		$rows = (array) $wpdb->get_results( "SELECT * FROM {$wpdb->users} WHERE ID IN ({$list}) ORDER BY ID FOR UPDATE" );
		// One statement locks the meta rows and reads them: what WordPress caches is what the
		// lock holds.
		$meta = (array) $wpdb->get_results( "SELECT user_id, meta_key, meta_value FROM {$wpdb->usermeta} WHERE user_id IN ({$list}) ORDER BY user_id, umeta_id FOR UPDATE", ARRAY_A );
		// phpcs:enable WordPress.DB.PreparedSQL.NotPrepared
		foreach ( $rows as $row ) {
			self::$rows[ (int) $row->ID ] = $row;
			wp_cache_delete( (int) $row->ID, 'user_meta' );
		}
		self::$found = $found;
		self::cache_meta( array_keys( self::$rows ), $meta );
		// Whatever writes one of these users (an item, or another plugin's hook) drops its row.
		add_action( 'clean_user_cache', array( __CLASS__, 'forget' ), PHP_INT_MIN, 1 );
		foreach ( self::META_WRITES as $hook ) {
			add_action( $hook, array( __CLASS__, 'meta_written' ), PHP_INT_MIN, 2 );
		}
	}

	/**
	 * Cache the users' meta from the rows the lock read, as update_meta_cache() caches what it
	 * reads (the same code in WordPress 6.1 and 6.8): per user, each key's raw values in the
	 * order of their meta IDs, and an empty array for a user without meta. Where a plugin filters
	 * update_user_metadata_cache (it may cache something else), or before WordPress 6.0 (no
	 * wp_cache_add_multiple()), update_meta_cache() itself reads them again. Reading them in the
	 * locking statement saves a query of every meta row of the batch's users (~2,000 for 100
	 * users: 3.8 ms of a 15 ms batch of unchanged users, SAVEQUERIES).
	 *
	 * @param int[] $ids  Users to cache (their users rows were read).
	 * @param array $meta Rows of user_id, meta_key, meta_value, by user and meta ID.
	 * @return void
	 */
	private static function cache_meta( array $ids, array $meta ) {
		if ( has_filter( 'update_user_metadata_cache' ) || ! function_exists( 'wp_cache_add_multiple' ) ) {
			update_meta_cache( 'user', $ids );
			return;
		}
		$cache = array();
		foreach ( $meta as $metarow ) {
			$cache[ (int) $metarow['user_id'] ][ $metarow['meta_key'] ][] = $metarow['meta_value'];
		}
		$data = array();
		foreach ( $ids as $id ) {
			$data[ $id ] = isset( $cache[ $id ] ) ? $cache[ $id ] : array();
		}
		wp_cache_add_multiple( $data, 'user_meta' );
	}

	/**
	 * Whether a value is valid UTF-8 (the lookups below compare it in PHP or next to other values;
	 * anything else is looked up by its own query, as a lone item does).
	 *
	 * @param string $value Value.
	 * @return bool
	 */
	private static function plain_utf8( $value ) {
		return is_string( $value ) && 1 === preg_match( '//u', $value );
	}

	/**
	 * What wpsb_user_id_by_email_sql() finds for each email, in two queries for all of them,
	 * where the answer is certain. That query matches a user when user_email equals the email in
	 * the column's collation and, byte for byte, once both are lower-cased (LOWER() in the
	 * database). The first query reads every user whose user_email equals one of the emails in
	 * that collation, with FIELD(): the first email it equals, in the same collation; and the
	 * user_email lower-cased. The second lower-cases the emails. A user matches the email FIELD()
	 * names when the lower-cased forms are the same bytes; if its lower-cased form is also another
	 * email's, whether it equals that one in the collation is not known here, and that email is
	 * left to its own query. So each answer given is the query's own: MIN(ID) of the users that
	 * match.
	 *
	 * @param array<string, string> $emails Lookup SQL => email (trimmed, valid UTF-8).
	 * @return array<string, int> Lookup SQL => user ID, for the emails a user certainly matches.
	 */
	private static function found_by_email( array $emails ) {
		global $wpdb;
		if ( ! $emails ) {
			return array();
		}
		$values = array_values( array_unique( $emails ) );
		$list   = implode( ', ', array_fill( 0, count( $values ), '%s' ) );
		// phpcs:disable WordPress.DB.PreparedSQL -- placeholders only.
		$lowers = implode( ', ', array_fill( 0, count( $values ), 'HEX(BINARY LOWER(%s))' ) );
		$lower  = (array) $wpdb->get_row( $wpdb->prepare( "SELECT {$lowers}", $values ), ARRAY_N );
		if ( count( $lower ) !== count( $values ) ) {
			return array(); // Not answered: every email runs its own query.
		}
		$rows = (array) $wpdb->get_results(
			$wpdb->prepare(
				"SELECT ID, FIELD(user_email, {$list}) AS f, HEX(BINARY LOWER(user_email)) AS l"
					. " FROM {$wpdb->users} WHERE user_email IN ({$list})",
				array_merge( $values, $values )
			)
		);
		// phpcs:enable
		$by_lower = array();
		foreach ( $lower as $i => $hex ) {
			$by_lower[ (string) $hex ][] = $i;
		}
		$min     = array();
		$unknown = array();
		foreach ( $rows as $row ) {
			$named = (int) $row->f - 1;
			foreach ( $by_lower[ (string) $row->l ] ?? array() as $i ) {
				if ( $i === $named ) {
					$min[ $i ] = isset( $min[ $i ] ) ? min( $min[ $i ], (int) $row->ID ) : (int) $row->ID;
				} else {
					$unknown[ $i ] = true;
				}
			}
		}
		$position = array_flip( $values );
		$found    = array();
		foreach ( $emails as $sql => $email ) {
			$i = $position[ $email ];
			if ( isset( $min[ $i ] ) && ! isset( $unknown[ $i ] ) ) {
				$found[ $sql ] = $min[ $i ];
			}
		}
		return $found;
	}

	/**
	 * What wpsb_user_id_by_meta_sql() finds through the contact index for each (meta key,
	 * contact ID), in one query for all of them. The index compares in utf8mb4_bin, which pads
	 * with spaces: two values are equal when they are the same once trailing spaces are dropped,
	 * which is how the rows read are matched to the lookups here. MIN(user_id) of the rows whose
	 * user exists, as that query answers.
	 *
	 * @param array<string, array> $contacts Lookup SQL => array( meta key, contact ID ).
	 * @return array<string, int> Lookup SQL => user ID, for the lookups that find one.
	 */
	private static function found_by_contact( array $contacts ) {
		global $wpdb;
		if ( ! $contacts ) {
			return array();
		}
		$keys  = array_values( array_unique( array_column( $contacts, 0 ) ) );
		$ids   = array_values( array_unique( array_column( $contacts, 1 ) ) );
		$table = wpsb_contacts_table();
		// phpcs:disable WordPress.DB.PreparedSQL -- placeholders only.
		$rows = (array) $wpdb->get_results(
			$wpdb->prepare(
				"SELECT c.meta_key, c.contact_id, c.user_id FROM {$table} c"
					. " JOIN {$wpdb->users} u ON u.ID = c.user_id WHERE c.meta_key IN ("
					. implode( ', ', array_fill( 0, count( $keys ), '%s' ) ) . ') AND c.contact_id IN ('
					. implode( ', ', array_fill( 0, count( $ids ), '%s' ) ) . ')',
				array_merge( $keys, $ids )
			)
		);
		// phpcs:enable
		$min = array();
		foreach ( $rows as $row ) {
			$pair         = rtrim( (string) $row->meta_key, ' ' ) . "\0" . rtrim( (string) $row->contact_id, ' ' );
			$min[ $pair ] = isset( $min[ $pair ] ) ? min( $min[ $pair ], (int) $row->user_id ) : (int) $row->user_id;
		}
		$found = array();
		foreach ( $contacts as $sql => $lookup ) {
			$pair = rtrim( $lookup[0], ' ' ) . "\0" . rtrim( $lookup[1], ' ' );
			if ( isset( $min[ $pair ] ) ) {
				$found[ $sql ] = $min[ $pair ];
			}
		}
		return $found;
	}

	/**
	 * What each lookup query finds, run as it is, all in one UNION ALL.
	 *
	 * @param string[] $lookups Lookup SQL.
	 * @return array<string, int> Lookup SQL => user ID, for the lookups that find one.
	 */
	private static function found_as_is( array $lookups ) {
		global $wpdb;
		$lookups = array_values( array_unique( $lookups ) );
		if ( ! $lookups ) {
			return array();
		}
		$parts = array();
		foreach ( $lookups as $k => $sql ) {
			$parts[] = "SELECT {$k} AS k, ({$sql}) AS id";
		}
		$found = array();
		foreach ( (array) $wpdb->get_results( implode( ' UNION ALL ', $parts ) ) as $hit ) { // phpcs:ignore WordPress.DB.PreparedSQL.NotPrepared
			if ( null !== $hit->id ) {
				$found[ $lookups[ (int) $hit->k ] ] = (int) $hit->id;
			}
		}
		return $found;
	}

	/**
	 * The users row the lookup query finds, if the batch read it and nothing wrote it since.
	 *
	 * @param string $id_sql Lookup query.
	 * @return object|null Null: not known, run the query.
	 */
	public static function row_found_by( $id_sql ) {
		$id = self::$found[ $id_sql ] ?? 0;
		return $id && isset( self::$rows[ $id ] ) ? self::$rows[ $id ] : null;
	}

	/**
	 * An item wrote this user (or made it): its lookups run again, its row comes from the cache.
	 *
	 * @param int $user_id User ID.
	 * @return void
	 */
	public static function forget( $user_id ) {
		unset( self::$rows[ (int) $user_id ] );
	}

	/**
	 * added_user_meta / updated_user_meta / deleted_user_meta: that user was written.
	 *
	 * @param mixed $meta_id Meta ID(s).
	 * @param int   $user_id User ID.
	 * @return void
	 */
	public static function meta_written( $meta_id, $user_id ) {
		self::forget( $user_id );
	}

	/**
	 * The batch is over (committed or rolled back).
	 *
	 * @return void
	 */
	public static function stop() {
		if ( self::$found ) {
			remove_action( 'clean_user_cache', array( __CLASS__, 'forget' ), PHP_INT_MIN );
			foreach ( self::META_WRITES as $hook ) {
				remove_action( $hook, array( __CLASS__, 'meta_written' ), PHP_INT_MIN );
			}
		}
		self::$found = array();
		self::$rows  = array();
	}
}

/**
 * Runs one batch: the items' email locks are taken (in a fixed order, so two batches cannot wait
 * on each other) and held until after COMMIT; the items run in one READ COMMITTED transaction
 * (under REPEATABLE READ a batch would not see a user another batch committed after it began,
 * and create a duplicate). Mails are held until the COMMIT, so no mail names a user that a
 * rollback undid. On any database error or PHP failure the transaction is rolled back and the
 * items run again one by one, each on its own as the single upsert does: one bad item never
 * loses the others.
 */
final class WPSB_Upsert_Batch {

	/** @var array<int, array|WP_Error> Parsed arguments (or the item's error), by position. */
	private $items = array();

	/** @var string How the items ran: transaction or per_item. */
	public $mode = 'transaction';

	/** @var int[] Users created or changed in the transaction (their caches are dropped on rollback). */
	private $touched = array();

	/** @var int Database errors recorded before the transaction began (wpdb::print_error()). */
	private $errors_before = 0;

	/** @var bool Whether a database error ended the transaction (later queries are not run). */
	private $failed = false;

	/**
	 * Parse every item.
	 *
	 * @param array $items Raw upsert arguments, one array per user.
	 */
	public function __construct( array $items ) {
		foreach ( array_values( $items ) as $i => $item ) {
			if ( ! is_array( $item ) || ( array() !== $item && wp_is_numeric_array( $item ) ) ) {
				$this->items[ $i ] = wpsb_invalid_arg( "users[$i]", 'must be an object of upsert arguments.' );
				continue;
			}
			$this->items[ $i ] = wpsb_parse_upsert_args( $item );
		}
	}

	/**
	 * Lock, run, unlock.
	 *
	 * @return array Per item, in order: the single upsert's answer, or {outcome: refused, error}.
	 */
	public function run() {
		$results = array();
		$locked  = $this->lock( $results );
		try {
			$pending = array_diff_key( $this->items, $results );
			$done    = $pending ? $this->in_transaction( $pending ) : array();
			if ( null === $done ) {
				$this->mode = 'per_item';
				$done       = $this->one_by_one( $pending );
			}
			$results += $done;
		} finally {
			wpsb_release_locks( $locked );
		}
		ksort( $results );
		return array_values( array_map( 'wpsb_batch_item_answer', $results ) );
	}

	/**
	 * Take each distinct email's lock once, in sorted order. An item whose arguments are invalid,
	 * or whose lock is not granted in time, gets its error here.
	 *
	 * @param array $results Collects those items' errors.
	 * @return string[] The emails locked.
	 */
	private function lock( array &$results ) {
		$by_email = array();
		foreach ( $this->items as $i => $a ) {
			if ( is_wp_error( $a ) ) {
				$results[ $i ] = $a;
				continue;
			}
			$by_email[ wpsb_normalize_email( $a['email'] ) ][] = $i;
		}
		ksort( $by_email, SORT_STRING );
		$locked = array();
		foreach ( wpsb_acquire_locks( array_map( 'strval', array_keys( $by_email ) ) ) as $email => $got ) {
			if ( is_wp_error( $got ) ) {
				foreach ( $by_email[ $email ] as $i ) {
					$results[ $i ] = $got;
				}
				continue;
			}
			$locked[] = $email;
		}
		return $locked;
	}

	/**
	 * All items in one transaction; null when it had to be rolled back.
	 *
	 * @param array $pending Position => parsed arguments.
	 * @return array|null Position => answer or WP_Error.
	 */
	private function in_transaction( array $pending ) {
		global $wpdb, $EZSQL_ERROR;
		$this->errors_before = is_array( $EZSQL_ERROR ) ? count( $EZSQL_ERROR ) : 0;
		$this->failed        = false;
		$this->touched       = array();
		// SET TRANSACTION (without SESSION) applies to the next transaction only.
		$wpdb->query( 'SET TRANSACTION ISOLATION LEVEL READ COMMITTED' );
		$wpdb->query( 'START TRANSACTION' );
		add_filter( 'query', array( $this, 'guard_query' ), PHP_INT_MAX );
		add_action( 'user_register', array( $this, 'touch' ), PHP_INT_MIN );
		// Counting users after each create gives the same count as counting once after COMMIT.
		$counts = remove_action( 'user_register', 'wp_maybe_update_user_counts', 10 );
		WPSB_Mail_Hold::start();
		$done = array();
		try {
			WPSB_Batch_Prime::start( $pending );
			foreach ( $pending as $i => $a ) {
				$done[ $i ] = wpsb_upsert_locked( $a );
				if ( ! is_wp_error( $done[ $i ] ) && $done[ $i ]['user_id'] ) {
					$this->touched[] = (int) $done[ $i ]['user_id'];
					WPSB_Batch_Prime::forget( (int) $done[ $i ]['user_id'] );
				}
				if ( $this->db_failed() ) {
					break;
				}
			}
		} catch ( Throwable $e ) {
			$this->failed = true; // The item may have stopped half-way: run them one by one.
		}
		WPSB_Batch_Prime::stop();
		remove_filter( 'query', array( $this, 'guard_query' ), PHP_INT_MAX );
		remove_action( 'user_register', array( $this, 'touch' ), PHP_INT_MIN );
		if ( $counts ) {
			add_action( 'user_register', 'wp_maybe_update_user_counts', 10, 0 );
		}
		WPSB_Meta_Cache::stop();
		if ( $this->db_failed() || false === $wpdb->query( 'COMMIT' ) || $this->db_failed() ) {
			$wpdb->query( 'ROLLBACK' );
			WPSB_Mail_Hold::discard();
			$this->forget_cached( $pending );
			return null;
		}
		WPSB_Mail_Hold::send();
		if ( $counts && in_array( true, wp_list_pluck( array_filter( $done, 'is_array' ), 'created' ), true ) ) {
			wp_maybe_update_user_counts();
		}
		return $done;
	}

	/**
	 * After a rollback, drop what WordPress's caches hold of every user the items may have read or
	 * written, so that the items run again read them from the database. Not only the users the
	 * finished items named: the item the error stopped had its writes undone too, and the queries
	 * refused after the error (guard_query) made WordPress cache what they returned, nothing (a
	 * user's meta cached as empty: the next writes would add every key again) or the undone
	 * values (a write taken for done, lost). The users are found again by their items' own
	 * lookups, now outside the transaction; the users the transaction created are gone, their
	 * lookup keys are dropped with them.
	 *
	 * @param array $pending Position => parsed arguments.
	 * @return void
	 */
	private function forget_cached( array $pending ) {
		$ids = $this->touched;
		foreach ( $pending as $a ) {
			if ( null !== $a['contact_id'] && '' !== $a['contact_id'] && null !== $a['contact_id_key'] ) {
				$ids[] = wpsb_find_user_id_by_meta( $a['contact_id_key'], $a['contact_id'] );
			}
			$ids[] = wpsb_find_user_id_by_email( $a['email'] );
			$email = trim( (string) $a['email'] );
			wp_cache_delete( $email, 'useremail' );
			wp_cache_delete( wpsb_normalize_email( $email ), 'useremail' );
			if ( null !== $a['login'] ) {
				wp_cache_delete( $a['login'], 'userlogins' );
			}
		}
		foreach ( array_unique( array_filter( array_map( 'intval', $ids ) ) ) as $user_id ) {
			wp_cache_delete( $user_id, 'users' );
			wp_cache_delete( $user_id, 'user_meta' );
			clean_user_cache( $user_id ); // Read again from the database: its login, email and slug keys.
		}
	}

	/**
	 * Each item on its own, as the single upsert runs it (the locks are still held).
	 *
	 * @param array $pending Position => parsed arguments.
	 * @return array Position => answer or WP_Error.
	 */
	private function one_by_one( array $pending ) {
		$done = array();
		foreach ( $pending as $i => $a ) {
			try {
				$done[ $i ] = wpsb_upsert_locked( $a );
			} catch ( Throwable $e ) {
				WPSB_Meta_Cache::stop();
				$done[ $i ] = new WP_Error( 'wpsb_item_failed', 'The item failed inside WordPress.', array( 'status' => 500 ) );
			}
		}
		return $done;
	}

	/**
	 * Whether a database error happened since the transaction began.
	 *
	 * @return bool
	 */
	private function db_failed() {
		global $EZSQL_ERROR;
		if ( ! $this->failed && is_array( $EZSQL_ERROR ) && count( $EZSQL_ERROR ) > $this->errors_before ) {
			$this->failed = true;
		}
		return $this->failed;
	}

	/**
	 * query filter while the transaction runs: after a database error, run nothing more. A
	 * deadlock has already rolled the transaction back, and what followed would be autocommitted.
	 *
	 * @param string $query SQL.
	 * @return string
	 */
	public function guard_query( $query ) {
		return $this->db_failed() ? '' : $query;
	}

	/**
	 * user_register action: remember a user the transaction created.
	 *
	 * @param int $user_id User ID.
	 * @return void
	 */
	public function touch( $user_id ) {
		$this->touched[] = (int) $user_id;
	}
}

/**
 * The answer for one item of a batch: the single upsert's answer, or the error it would have
 * answered, as {outcome: refused, error: {code, message, data}} (data.status: its HTTP status).
 *
 * @param array|WP_Error $result Result.
 * @return array
 */
function wpsb_batch_item_answer( $result ) {
	if ( ! is_wp_error( $result ) ) {
		return $result;
	}
	$data = $result->get_error_data();
	return array(
		'outcome' => 'refused',
		'error'   => array(
			'code'    => (string) $result->get_error_code(),
			'message' => $result->get_error_message(),
			'data'    => (object) ( is_array( $data ) ? $data : array( 'status' => 500 ) ),
		),
	);
}

/**
 * Mails held while a batch's transaction runs, sent after its COMMIT, dropped on rollback.
 * The arguments are caught as wp_mail() was called (wp_mail filter, first), so that sending
 * them later runs the site's mail filters once, as a direct call would.
 */
final class WPSB_Mail_Hold {

	/** @var array[]|null Held wp_mail() arguments; null when not holding. */
	private static $held = null;

	/** @var array|null The arguments of the wp_mail() call in progress. */
	private static $current = null;

	/**
	 * Start holding.
	 *
	 * @return void
	 */
	public static function start() {
		self::$held = array();
		add_filter( 'wp_mail', array( __CLASS__, 'remember' ), PHP_INT_MIN );
		add_filter( 'pre_wp_mail', array( __CLASS__, 'hold' ), PHP_INT_MIN, 2 );
	}

	/**
	 * wp_mail filter: the call's own arguments, before other filters change them.
	 *
	 * @param array $atts to, subject, message, headers, attachments.
	 * @return array
	 */
	public static function remember( $atts ) {
		self::$current = $atts;
		return $atts;
	}

	/**
	 * pre_wp_mail filter: keep the mail for later and report it as sent.
	 *
	 * @param null|bool $return Null.
	 * @param array     $atts   Filtered arguments.
	 * @return null|bool
	 */
	public static function hold( $return, $atts ) {
		if ( null === self::$held ) {
			return $return;
		}
		self::$held[]  = self::$current ?? $atts;
		self::$current = null;
		return true;
	}

	/**
	 * Stop holding; send what was held.
	 *
	 * @return void
	 */
	public static function send() {
		$held = self::stop();
		foreach ( $held as $atts ) {
			wp_mail( $atts['to'], $atts['subject'], $atts['message'], $atts['headers'] ?? '', $atts['attachments'] ?? array() );
		}
	}

	/**
	 * Stop holding; drop what was held (its transaction was rolled back).
	 *
	 * @return void
	 */
	public static function discard() {
		self::stop();
	}

	/**
	 * Stop holding.
	 *
	 * @return array[] What was held.
	 */
	private static function stop() {
		$held          = (array) self::$held;
		self::$held    = null;
		self::$current = null;
		remove_filter( 'wp_mail', array( __CLASS__, 'remember' ), PHP_INT_MIN );
		remove_filter( 'pre_wp_mail', array( __CLASS__, 'hold' ), PHP_INT_MIN );
		return $held;
	}
}

/**
 * Upsert many users: each item as wpsb_op_upsert_user() would, in one transaction where safe.
 *
 * @param array $args users: a list of upsert arguments (at most WPSB_BATCH_MAX_ITEMS).
 * @return array|WP_Error {results: [answer|{outcome: refused, error}], mode: transaction|per_item}
 */
function wpsb_op_upsert_users( array $args ) {
	$auth = wpsb_authorize( array( 'list_users' ) );
	if ( is_wp_error( $auth ) ) {
		return $auth;
	}
	$users = $args['users'] ?? null;
	if ( ! is_array( $users ) || ( array() !== $users && ! wp_is_numeric_array( $users ) ) ) {
		return wpsb_invalid_arg( 'users', 'must be a list of upsert argument objects.' );
	}
	if ( count( $users ) > WPSB_BATCH_MAX_ITEMS ) {
		return wpsb_invalid_arg( 'users', sprintf( 'at most %d users per request.', WPSB_BATCH_MAX_ITEMS ) );
	}
	$passwords = 0;
	foreach ( $users as $user ) {
		$password   = is_array( $user ) ? ( $user['password'] ?? null ) : null;
		$passwords += is_string( $password ) && '' !== trim( $password );
	}
	if ( $passwords > WPSB_BATCH_MAX_PASSWORDS ) {
		return wpsb_invalid_arg(
			'users',
			sprintf( 'at most %d users with a password per request (each costs a hash).', WPSB_BATCH_MAX_PASSWORDS )
		);
	}
	$batch   = new WPSB_Upsert_Batch( $users );
	$results = $batch->run();
	return array(
		'results' => $results,
		'mode'    => $batch->mode,
	);
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
 * rest_api_init, first: a request for one of this plugin's routes does not register WordPress
 * core's own REST routes (wp/v2 and the others, ~2-3 ms of CPU per request here, 10-15% of a
 * small batch's), which it never dispatches to. Other plugins' routes, the authentication and
 * every filter around the dispatch run as before; the filter wpsb_lean_rest (false) keeps the
 * core routes for a site whose code needs them even there.
 *
 * @return void
 */
function wpsb_lean_rest() {
	global $wp;
	$route = isset( $wp->query_vars['rest_route'] ) ? (string) $wp->query_vars['rest_route'] : '';
	if ( 0 === strpos( $route, '/' . WPSB_REST_NAMESPACE . '/' ) && apply_filters( 'wpsb_lean_rest', true ) ) {
		remove_action( 'rest_api_init', 'create_initial_rest_routes', 99 );
	}
}
add_action( 'rest_api_init', 'wpsb_lean_rest', PHP_INT_MIN );

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
 * XML-RPC wpsb.upsertUsers(blog_id, username, password, struct {users: [struct, ...]}).
 *
 * @param array $params Parameters.
 * @return array|IXR_Error
 */
function wpsb_xmlrpc_upsert_users( $params ) {
	return wpsb_xmlrpc_call( 'upsert_batch', 'wpsb.upsertUsers', $params );
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
