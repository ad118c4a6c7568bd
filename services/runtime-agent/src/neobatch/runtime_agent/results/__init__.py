"""A batch's results: checkpoint pages in `batch_results` (format, writer, readers) and the
OpenAI output and error files built from them."""
