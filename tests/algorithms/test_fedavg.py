from zofed.algorithms import build_algorithm

from .toy import ToyProblem, run_rounds


def test_backprop_fedavg_lowers_the_global_loss_with_each_optimizer():
    for settings in ({"optimizer": "sgd", "lr": 0.05}, {"optimizer": "adamw", "lr": 0.05}):
        problem = ToyProblem()
        state = run_rounds(build_algorithm("fedavg", settings), problem, rounds=5)
        assert problem.global_loss(state.weights) < 0.5 * problem.global_loss(problem.initial())
