"""How a batch's requests are sent: retry and concurrency policy, the pool, the tally."""
