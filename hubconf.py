dependencies = ["torch"]
from drn.zoo.registry import _CONSTRUCTORS as _models  # noqa: E402
globals().update({name: (lambda n: lambda **kw: __import__("drn").build(n, **kw))(name) for name in _models})
