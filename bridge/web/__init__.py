"""The aiohttp intake: thin handlers that call ``bridge.core``, enqueue durably, and answer."""
