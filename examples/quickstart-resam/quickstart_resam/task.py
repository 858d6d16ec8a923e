"""quickstart-resam: the model, the data and the training loop (unchanged by RESAM).

The data is offline: CIFAR-10-shaped images (3x32x32, 10 classes) whose class shows as a bright patch in a
class-specific place, so that the app runs anywhere. With internet access, swap ``load_data`` for Flower's
``FederatedDataset(dataset="uoft-cs/cifar10", ...)`` as in Flower's own quickstart: nothing else changes.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    """A small CNN (as in PyTorch's 60-minute blitz)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def _images(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=gen)
    images = torch.randn(n, 3, 32, 32, generator=gen) * 0.5
    for i, y in enumerate(labels.tolist()):
        row, col = divmod(y, 5)
        images[i, y % 3, 4 + 12 * row : 16 + 12 * row, 1 + 6 * col : 7 + 6 * col] += 3.0
    return TensorDataset(images, labels)


def load_data(partition_id: int, num_partitions: int, batch_size: int):
    """This node's train and validation loaders (500 + 100 images per node)."""
    train = _images(500, seed=2 * partition_id)
    val = _images(100, seed=2 * partition_id + 1)
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size=batch_size)


def load_centralized_dataset():
    """A held-out test set for the server."""
    return DataLoader(_images(1000, seed=10_000), batch_size=128)


def train(net, trainloader, epochs, lr, device):
    """Train the model on the training set; return the mean loss."""
    net.to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for images, labels in trainloader:
            optimizer.zero_grad()
            loss = F.cross_entropy(net(images.to(device)), labels.to(device))
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    return running_loss / (epochs * len(trainloader))


def test(net, testloader, device):
    """Loss and accuracy of the model on a data set."""
    net.to(device)
    net.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for images, labels in testloader:
            outputs = net(images.to(device))
            loss += F.cross_entropy(outputs, labels.to(device)).item()
            correct += (outputs.argmax(1) == labels.to(device)).sum().item()
    return loss / len(testloader), correct / len(testloader.dataset)
