"""--target_accuracy: the split it is checked on and when it counts as reached."""

from mnist_jax.training import control


def test_checked_on_validation_when_there_is_one():
  t = control.Target(0.9, has_val=True)
  assert t.active and t.split == "val" and not t.needs_test
  assert t.value({"val_accuracy": 0.91}, None) == 0.91
  assert t.reached(0.9) and t.reached(0.91) and not t.reached(0.89)
  assert t.message(0.91, 3, 12.34) == (
      "reached val accuracy 91.00% >= 90.00% after epoch 3 in 12.3s")


def test_checked_on_test_without_validation():
  t = control.Target(0.5, has_val=False)
  assert t.split == "test" and t.needs_test
  assert t.value({"val_accuracy": None}, {"accuracy": 0.4}) == 0.4
  assert not t.reached(0.4)


def test_no_target_is_never_reached():
  t = control.Target(0.0, has_val=False)
  assert not t.active and not t.needs_test
  assert t.value({"val_accuracy": 1.0}, None) is None
  assert not t.reached(None)
