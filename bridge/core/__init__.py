"""Pure functions: no aiohttp, no database, no clock. Tested from recorded sample payloads."""
