"""The LSTM sentiment baseline (course lab 1): embedding -> (bi)LSTM over packed sequences ->
dropout -> linear head. Trained from scratch; no pretrained weights.

Packing (``pack_padded_sequence``) runs the recurrence over each text's real words only, so
padding never enters the state and a text gets the same logits alone or in a batch with a
much longer one.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from tunelab.data.vocab import PAD_ID


class LSTMClassifier(nn.Module):
    """Takes the loop's batch (``input_ids``, right-padded, and ``attention_mask``) and returns
    logits (B, num_labels)."""

    def __init__(self, vocab_size: int, num_labels: int, embedding_dim: int = 100, hidden_size: int = 100,
                 n_layers: int = 1, bidirectional: bool = False, dropout: float = 0.5):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)
        # nn.LSTM applies its dropout between stacked layers only; with one layer it would warn.
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers=n_layers, bidirectional=bidirectional,
                            dropout=dropout if n_layers > 1 else 0.0, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size * (2 if bidirectional else 1), num_labels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The lab's init: Xavier (normal) for the embedding and the head, orthogonal LSTM
        weight matrices, zero biases."""
        nn.init.xavier_normal_(self.embedding.weight)
        with torch.no_grad():
            # Xavier overwrote the padding row; keep it zero (padding_idx then keeps its gradient at zero).
            self.embedding.weight[PAD_ID].zero_()
        nn.init.xavier_normal_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)
        for name, param in self.lstm.named_parameters():
            if name.startswith("weight"):
                # weight_ih is (4H, E): orthogonal_ makes its rows (or columns) orthonormal.
                nn.init.orthogonal_(param)
            else:
                nn.init.zeros_(param)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        lengths = attention_mask.sum(1)  # (B,) real words per text; the collator pads on the right
        embedded = self.dropout(self.embedding(input_ids))  # (B, T, E)
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (hidden, _) = self.lstm(packed)  # hidden: (n_layers * directions, B, H), last real step of each text
        if self.lstm.bidirectional:
            final = torch.cat([hidden[-2], hidden[-1]], dim=1)  # top layer, forward and backward: (B, 2H)
        else:
            final = hidden[-1]  # (B, H)
        return self.classifier(self.dropout(final))  # (B, num_labels)
