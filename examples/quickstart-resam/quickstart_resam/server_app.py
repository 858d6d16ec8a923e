"""quickstart-resam: a Flower ServerApp; RESAM replaces FedAvg by ResilientAveraging."""

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from quickstart_resam.task import Net, load_centralized_dataset
from quickstart_resam.task import test as test_fn
from resam_flower.strategies import ResilientAveraging

app = ServerApp()


def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """Evaluate the global model on the server's held-out data."""
    model = Net()
    model.load_state_dict(arrays.to_torch_state_dict())
    loss, accuracy = test_fn(model, load_centralized_dataset(), torch.device("cpu"))
    return MetricRecord({"accuracy": accuracy, "loss": loss})


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""
    fraction_evaluate = context.run_config["fraction-evaluate"]
    num_rounds = context.run_config["num-server-rounds"]
    lr = context.run_config["lr"]

    global_model = Net()
    arrays = ArrayRecord(global_model.state_dict())

    # Resilient averaging of the workers' momentums, tolerating num-byzantine lying nodes; the server steps
    # with the clients' lr: a local epoch's momentum is a sum of gradients, as FedAvg's update is
    strategy = ResilientAveraging(
        "nnm+cwtm",
        num_byzantine=context.run_config["num-byzantine"],
        lr=lr,
        fraction_evaluate=fraction_evaluate,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=arrays,
        train_config=ConfigRecord({"lr": lr}),
        num_rounds=num_rounds,
        evaluate_fn=global_evaluate,
    )

    print("\nSaving final model to disk...")
    torch.save(result.arrays.to_torch_state_dict(), "final_model.pt")
