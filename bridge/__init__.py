"""wp-sync-bridge: keeps WordPress users in sync with a CRM through WP Fusion-compatible webhooks.

Architecture (one package per layer):

- ``bridge.core``     pure functions: parse a delivery, check keys and signatures, extract the
                      contact, map CRM fields to WordPress fields, decide login/role/password.
- ``bridge.store``    SQLite: numbered migrations, the durable intake (group commit) and the job queue.
- ``bridge.clients``  HTTP clients (WordPress REST and XML-RPC, connector-driven CRMs); each reads
                      responses in one place into values or typed errors.
- ``bridge.worker``   runs queued jobs: per-contact order, coalescing, retries, dead letters.
- ``bridge.sync``     the steps of one job (fetch contact, upsert user, write the password back).
- ``bridge.web``      the aiohttp intake server (thin: calls core, enqueues, answers).
- ``bridge.app``      the lifecycle: start in order, stop in reverse, drain on SIGTERM.
- ``bridge.settings`` the one settings object, from TOML and the environment.
"""

__version__ = "0.1.0"
