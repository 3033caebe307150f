"""Real processes and servers for the tests and the benchmarks: both import this, not each other."""
