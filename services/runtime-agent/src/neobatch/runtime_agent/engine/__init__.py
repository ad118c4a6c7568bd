"""The inference engine as the agent reaches it: a lean HTTP/1.1 client and the request client."""
