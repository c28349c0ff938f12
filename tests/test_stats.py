"""Campaign comparisons: Â12, Mann-Whitney U, quartiles."""
import pytest

from harness.stats import a12, iqr, mann_whitney_p


def test_a12_is_the_chance_of_needing_less():
    assert a12([1, 2], [3, 4]) == 1.0
    assert a12([3, 4], [1, 2]) == 0.0
    assert a12([1, 3], [2, 3]) == (1 + 1 + 0 + 0.5) / 4      # 3 against 3 is a tie
    assert a12([5, 5], [5, 5]) == 0.5


def test_mann_whitney_p_by_the_normal_approximation():
    # U = 0, mean 12.5, sigma^2 = 25/12 * 11: z = 12 / 4.787, two-sided p = 0.01219
    assert mann_whitney_p([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(0.01219, abs=1e-4)
    assert mann_whitney_p([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]) == pytest.approx(0.01219, abs=1e-4)
    assert mann_whitney_p([1, 2, 3], [1, 2, 3]) == 1.0
    assert mann_whitney_p([4, 4, 4], [4, 4, 4]) == 1.0          # all tied: no variance
    # ties lower the variance, so the same separation is a little more significant
    assert mann_whitney_p([1, 2, 2, 3], [2, 3, 4, 4, 5]) == pytest.approx(0.0785, abs=1e-3)


def test_iqr():
    assert iqr([7]) == (7, 7)
    assert iqr(list(range(1, 11))) == (2.75, 8.25)
