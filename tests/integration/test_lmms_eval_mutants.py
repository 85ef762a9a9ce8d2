"""``toklip_llava``'s chat messages (lmms-eval's real ``ChatMessages``): gaps found by mutation testing (issue 15,
item 3, for issue 12's chat interface). tests/MUTATION.md lists the mutants these kill."""
from __future__ import annotations

import pytest
from PIL import Image

from toklip_plugin.integrations.lmms_eval.model import llava_turns


@pytest.mark.parametrize("mode", ["L", "P", "RGBA"])
@pytest.mark.parametrize("as_path", [False, True])
def test_a_message_image_in_any_mode_reaches_llava_as_rgb(tmp_path, mode, as_path):
    """LLaVA's square padding fills with an RGB colour: a grayscale, palette or RGBA image must arrive as RGB."""
    image = Image.new("RGB", (6, 4), (200, 40, 10)).convert(mode)
    if as_path:
        image.save(tmp_path / "image.png")
        image = str(tmp_path / "image.png")
    _, _, images = llava_turns([{"role": "user", "content": [{"type": "image", "url": image}]}])
    assert [(i.mode, i.size) for i in images] == [("RGB", (6, 4))]
