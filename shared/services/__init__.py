"""Logic shared by the API routes and the worker tasks."""
