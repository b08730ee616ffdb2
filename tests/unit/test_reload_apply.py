"""cri/reload.apply past its point of no return: what can still fail there must not leave half a reload that the
log calls 'nothing changed'."""

from __future__ import annotations

from types import SimpleNamespace

from cri import reload
from cri.config import Config


class _Cni:
    def reconfigure(self, conf_dir, plugin_dirs, timeout):
        self.conf_dir = conf_dir
        raise NotADirectoryError(20, "Not a directory", str(conf_dir))


def test_an_unreadable_cni_dir_still_applies_the_rest(tmp_path, caplog):
    handled, pinned, forgotten = [], [], []
    old = Config.model_validate({"runtime": {"default_runtime": "runc"}})  # the reload moves it to crun
    rt = SimpleNamespace(
        config=old, cni=_Cni(),
        sandboxes=SimpleNamespace(list=lambda: [], set_runtime_handlers=lambda h, d: handled.append((sorted(h), d))),
        images=SimpleNamespace(store=SimpleNamespace(registries=None), set_pinned=pinned.append),
        containers=SimpleNamespace(forget_runtime=forgotten.append))
    new = Config.model_validate({**old.model_dump(), "network": {"cni_conf_dir": str(tmp_path / "file")},
                                 "runtime": {**old.runtime.model_dump(), "default_runtime": "crun"},
                                 "storage": {**old.storage.model_dump(), "pinned_images": ["keep/*"]}})
    applied = reload.apply(rt, new, lambda config: None)
    assert applied == ["network.cni_conf_dir", "runtime.default_runtime", "storage.pinned_images"]
    assert handled == [(["crun", "runc"], "crun")] and old.runtime.default_runtime == "crun"
    assert pinned == [["keep/*"]] and str(old.network.cni_conf_dir) == str(tmp_path / "file")
    assert "reading the CNI config dir" in caplog.text
