"""SQLite state: migrations (``db``), one writer thread with group commit (``writer``), and the
SQL of the job queue and intake (``queue``), wrapped for asyncio by ``jobs.JobStore``."""
