"""The SAM paper's bAbI read-out (section 3.4): the STM's relational memory unbound with question-derived vectors.

For bAbI the paper reads the final relational memory ``M_r`` (``N x d x d``) as a third-order tensor-product
representation and answers with the inference module of TPR-RNN (Schlag & Schmidhuber 2018, section 3.3): the
N slots play the relations, the two ``d``-wide indices the entities. From the question vector ``q`` two MLPs
(``tpr.tanh_mlp``, as in the authors' ``qamodel.py``) give one entity vector ``e`` (size d) and three relation
vectors ``r1, r2, r3`` (size N), and

    i1 = LN(M_r . e . r1),   i2 = LN(M_r . i1 . r2),   i3 = LN(M_r . i2 . r3),   logits = W_o (i1 + i2 + i3),

with the unbinding ``(M_r . e . r)[c] = sum_{n, a} r_n e_a M_r[n, a, c]``: slot n of ``M_r`` is SAM's outer
products for query n (eq. 5), row a the query's side, column c the value's, as the authors' ``R.permute(0, 2, 1,
3)`` used as ``TPR[e, r, f]``. The memory is only read here; the question is never written into it.

Differences from the authors' module, all of them choices where their code is a defect or a detail: ``W_o`` is
trained (theirs multiplies by ``Z.data``, so its random initial projection is never trained), layer norm keeps
PyTorch's eps (1e-5, theirs 1e-12), and the unused second entity head is not created.
"""

from __future__ import annotations

from torch import Tensor, nn

from stm_rl.supervised.models.tpr import infer, tanh_mlp


def unbind(memory: Tensor, entity: Tensor, relation: Tensor) -> Tensor:
    """``M_r . e . r``: ``memory [B, N, d, d]``, ``entity [B, d]``, ``relation [B, N]`` -> ``[B, d]``, as two
    batched products (slots mixed first, then rows) that never copy the memory."""
    batch, slots, d, _ = memory.shape
    mixed = (relation.unsqueeze(1) @ memory.reshape(batch, slots, d * d)).view(batch, d, d)  # sum_n r_n M_r[n]
    return (entity.unsqueeze(1) @ mixed).squeeze(1)


class UnbindingReadout(nn.Module):
    """``logits = readout(question [B, I], memory [B, N, d, d])``: the question's vectors unbind the memory."""

    def __init__(self, question_size: int, output_size: int, d: int, num_slots: int, hidden_size: int) -> None:
        super().__init__()
        self.entity = tanh_mlp(question_size, hidden_size, d)
        self.relations = tanh_mlp(question_size, hidden_size, 3 * num_slots)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(3))
        self.output = nn.Linear(d, output_size)

    def forward(self, question: Tensor, memory: Tensor) -> Tensor:
        relations = self.relations(question).chunk(3, dim=-1)
        hops = infer(lambda e, r: unbind(memory, e, r), self.entity(question), relations, self.norms)
        return self.output(hops)
