"""
The Bigram-Backcopy (BB) task: a synthetic language on which attention sinks appear at CPU scale in a minute.

Guo et al. 2024, "Active-Dormant Attention Heads: Mechanistically Demystifying Extreme-Token Phenomena in LLMs".
Every sequence starts with a fixed BOS token; a few frequent tokens are triggers:

    x_0 = BOS,   x_1 ~ u                    (the unigram distribution of the non-triggers)
    x_{t+1} = x_{t-1}                       if x_t is a trigger    (copy the token before the trigger)
    x_{t+1} ~ P(· | x_t)                    otherwise               (a bigram table)

P and u are counted on Tiny Shakespeare's characters; the triggers are its k most frequent characters. A trigger
is always preceded by a non-trigger (only a bigram step from a non-trigger leads to one, and copies are of
non-triggers), so every copy is defined and there are never two triggers in a row.

Why it shows sinks: the bigram part needs no attention, the copy needs a head that looks one token back at trigger
positions and does nothing elsewhere. A softmax head cannot do nothing: at the other ("dormant") queries it parks
its weight on BOS, an attention sink, and BOS's value vector shrinks (a "value-state drain"); a normalizer that
may attend to nothing need not.

The Bayes-optimal predictor knows P, u and the triggers: loss 0 after a trigger, the bigram row's entropy
elsewhere. bayes_loss() is its expected loss, exactly, from the Markov chain over (token, after-trigger) states.
"""

import numpy as np
from scipy.special import entr

BOS_CHAR = "\x02"  # ASCII "start of text": a character of the vocabulary, so the char tokenizer needs nothing new


class BigramBackcopy:
    """The task's distribution over token ids: chars[i] is token i, BOS_CHAR among them."""

    def __init__(self, text, n_triggers=3):
        if BOS_CHAR in text:
            raise ValueError(f"the text contains the BOS character {BOS_CHAR!r}")
        self.chars = "".join(sorted(set(text) | {BOS_CHAR}))
        V = len(self.chars)
        if not 1 <= n_triggers < V - 2:
            raise ValueError(f"triggers must be between 1 and {V - 3} (the text has {V - 1} characters), "
                             f"got {n_triggers}")
        stoi = {c: i for i, c in enumerate(self.chars)}
        ids = np.array([stoi[c] for c in text], dtype=np.int64)
        self.bos = stoi[BOS_CHAR]
        counts = np.bincount(ids, minlength=V)
        # the most frequent first; ties by id, so the choice is a function of the text alone
        self.triggers = sorted(int(i) for i in np.lexsort((np.arange(V), -counts))[:n_triggers])
        self.is_trigger = np.isin(np.arange(V), self.triggers)
        pairs = np.zeros((V, V))
        np.add.at(pairs, (ids[:-1], ids[1:]), 1)
        rows = pairs.sum(1, keepdims=True)
        self.start = np.where(self.is_trigger | (np.arange(V) == self.bos), 0, counts).astype(float)
        self.start /= self.start.sum()
        # A character never followed by anything (only ever the text's last) is followed by the unigram distribution.
        self.bigram = np.where(rows > 0, pairs / np.maximum(rows, 1), counts / counts.sum())

    def sample(self, n, length, rng):
        """(n, length + 1) token ids: n sequences of BOS and length tokens."""
        x = np.empty((n, length + 1), dtype=np.int64)
        x[:, 0] = self.bos
        x[:, 1] = _draw(np.broadcast_to(self.start, (n, len(self.start))), rng)
        cdf = self.bigram.cumsum(1)
        for t in range(1, length):
            cur = x[:, t]
            nxt = _draw_cdf(cdf[cur], rng)
            x[:, t + 1] = np.where(self.is_trigger[cur], x[:, t - 1], nxt)
        return x

    def optimal_probs(self, x):
        """The Bayes-optimal probability of each next token of sequences x (n, L + 1): (n, L)."""
        p = np.empty(x[:, 1:].shape)
        p[:, 0] = self.start[x[:, 1]]
        copy = self.is_trigger[x[:, 1:-1]]
        p[:, 1:] = np.where(copy, (x[:, 2:] == x[:, :-2]).astype(float), self.bigram[x[:, 1:-1], x[:, 2:]])
        return p

    def bayes_loss_by_position(self, length):
        """The Bayes-optimal predictor's expected cross-entropy (nats) at each of the first length predictions of a
        sequence (x_1 ... x_length given what precedes each): an array of length values."""
        h, h_start = entr(self.bigram).sum(1), entr(self.start).sum()  # each row's entropy
        plain = ~self.is_trigger
        # at time t: on[a] = P(x_t = a, not a trigger); back[a] = P(x_t is a trigger, so x_(t+1) = a)
        on, back = self.start.copy(), np.zeros(len(self.chars))
        losses = [h_start]
        for _ in range(length - 1):
            losses.append(on @ h)  # a trigger's next token is certain: no loss
            into_trigger = on * self.bigram[:, ~plain].sum(1)  # a, then any trigger, which copies a next
            on, back = on @ (self.bigram * plain) + back, into_trigger
        return np.array(losses)

    def bayes_loss(self, length):
        """The mean of bayes_loss_by_position(length): the task's loss floor for windows of length predictions."""
        return self.bayes_loss_by_position(length).mean()


def _draw_cdf(cdf, rng):
    """One index per row of cdf (rows of cumulative probabilities)."""
    u = rng.random((cdf.shape[0], 1)) * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(1), cdf.shape[1] - 1)


def _draw(probs, rng):
    return _draw_cdf(np.cumsum(probs, axis=1), rng)
