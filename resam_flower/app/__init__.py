r"""The default Flower App behind \`flwr run .\`: ServerApp, ClientApp, run config, results."""
