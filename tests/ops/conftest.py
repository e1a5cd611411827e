"""Every test here parametrised with ``backend`` (and ``device``) needs that backend to run
on that device: it is skipped when it cannot, but fails under CI (``CI`` set), where the
extension and the Triton interpreter must work, so the suite never shrinks silently.
``cuda`` parameters carry the ``gpu`` mark and are skipped without a CUDA device."""
import pytest


@pytest.fixture(autouse=True)
def _backend_must_run(request, require_backend):
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    backend = params.get("backend")
    if backend is not None:
        require_backend(backend, params.get("device", "cpu"))
