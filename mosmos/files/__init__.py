"""What mosmos reads and writes on disk: the model file format (modelfile) and its card (modelcard), the
models folder with its downloads and indexes (model_store), the rules that keep an output from replacing
something it should not (outputs), atomic writes (atomic), the folders a failed run takes back (folders), the
JSON-lines event logs (events) and URLs shown without their credentials (redact)."""
