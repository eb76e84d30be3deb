"""The service shell: the `relay` command and its admin client, worker processes, and the demo."""
