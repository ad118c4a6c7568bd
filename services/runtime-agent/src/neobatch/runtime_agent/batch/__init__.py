"""A batch's life in this agent: the pure state machine (`batches`), its store, the runner that
claims batches, the lease watch, and the run that takes one batch from start to end."""
