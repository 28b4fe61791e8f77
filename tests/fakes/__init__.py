"""Fakes of the SaaS CRMs, following their documented APIs (shared/reference/crm-apis.md)."""
