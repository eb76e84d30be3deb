"""Downstream delivery: the worker and its queue SQL, one signed attempt, the endpoints, the
connect-time SSRF guard, the admin's view of the queue, and a receiver for tests and the demo."""
