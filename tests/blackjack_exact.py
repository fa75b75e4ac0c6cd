"""Independent reference for the Blackjack tests: exact values for the infinite-deck game (S&B rules).

Everything here is computed by recursion over (player sum, usable ace, dealer card) with the exact card
probabilities -- no sampling and no code shared with the algorithm files -- so a Monte Carlo estimate from
algorithms/ can be compared against it with a statistical tolerance. Used by test_mc_prediction.py (the
stick-on-20 policy of Figure 5.1) and test_mc_control.py (the optimal action values behind Figure 5.2).
"""

from __future__ import annotations

import math
from functools import lru_cache

# Infinite deck: every card 1 (ace) .. 9 has probability 1/13, the four ten-valued ranks together 4/13.
CARD_PROBS = {c: (4 / 13 if c == 10 else 1 / 13) for c in range(1, 11)}


def add_card(total, usable, card):
    """(new total, usable ace) after drawing `card`: an ace counts 11 when that does not bust, and a usable
    ace drops back to 1 when the hand would otherwise go over 21."""
    if usable:
        return (total + card, 1) if total + card <= 21 else (total + card - 10, 0)
    if card == 1 and total + 11 <= 21:
        return total + 11, 1
    return total + card, 0


@lru_cache(None)
def dealer_final(total, usable):
    """Distribution of the dealer's final sum (22 = bust) from (total, usable); the dealer hits below 17."""
    if total > 21:
        return {22: 1.0}
    if total >= 17:
        return {total: 1.0}
    out = {}
    for card, p in CARD_PROBS.items():
        for k, q in dealer_final(*add_card(total, usable, card)).items():
            out[k] = out.get(k, 0.0) + p * q
    return out


@lru_cache(None)
def dealer_from_showing(card):
    """Distribution of the dealer's final sum (22 = bust) given the showing card, over the hidden card."""
    out = {}
    for hidden, p in CARD_PROBS.items():
        for k, q in dealer_final(*add_card(*add_card(0, 0, card), hidden)).items():
            out[k] = out.get(k, 0.0) + p * q
    return out


def stick_value(total, dealer):
    """Expected reward of sticking on `total` against the showing card `dealer`: +1 if the dealer busts or
    ends lower, -1 if higher, 0 on a tie."""
    return sum(q * (1.0 if k > 21 else float(total > k) - float(total < k))
               for k, q in dealer_from_showing(dealer).items())


@lru_cache(None)
def exact_stick20_value(total, usable, dealer):
    """v(total, usable, dealer) of the policy 'stick on 20 or 21, hit otherwise' (Example 5.1 / Figure 5.1)."""
    if total > 21:
        return -1.0
    if total >= 20:
        return stick_value(total, dealer)
    return sum(p * exact_stick20_value(*add_card(total, usable, c), dealer) for c, p in CARD_PROBS.items())


@lru_cache(None)
def optimal_value(total, usable, dealer):
    """v*(total, usable, dealer) = max over actions of exact_q; -1 once the player has bust."""
    if total > 21:
        return -1.0
    return max(exact_q(total, usable, dealer))


@lru_cache(None)
def exact_q(total, usable, dealer):
    """(q*(stick), q*(hit)); below 12 only hitting is allowed (the book's convention), so q*(stick) = -inf."""
    hit = sum(p * optimal_value(*add_card(total, usable, c), dealer) for c, p in CARD_PROBS.items())
    return (stick_value(total, dealer) if total >= 12 else -math.inf), hit
