"""What mosmos reads and writes on disk: the model file format (modelfile) and its card (modelcard), the
models folder with its downloads and indexes (model_store), the rules that keep an output from replacing
something it should not (outputs), atomic writes (atomic) and the JSON-lines event logs (events)."""
