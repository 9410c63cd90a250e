//! Host package for tests, examples and benchmarks.
