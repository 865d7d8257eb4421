"""Research tooling apart from the library: benchmarks (--mode=bench), the experiments that
regenerate the papers' tables, and plots. Nothing in jdiff imports these but the command line."""
