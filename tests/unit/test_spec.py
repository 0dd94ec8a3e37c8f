import pytest

from virtrbd.errors import InvalidSpecError
from virtrbd.spec import ImageSpec


@pytest.mark.parametrize("text, expected", [
    ("img", ImageSpec("rbd", "img")),
    ("vms/img", ImageSpec("vms", "img")),
    ("vms/img@snap-1", ImageSpec("vms", "img", "snap-1")),
    ("img@s", ImageSpec("rbd", "img", "s")),
    ("p/a.b_c+d-e", ImageSpec("p", "a.b_c+d-e")),
])
def test_parse(text, expected):
    assert ImageSpec.parse(text) == expected
    assert str(expected) == (text if "/" in text else f"rbd/{text}")


@pytest.mark.parametrize("text", ["", " ", "rbd/../x", "a@b@c", "/img", "p/", "p/img@", "p/.hidden",
                                  "p/-x", "p/a b", "p/a\nb", "p/a\x00b", "p/" + "x" * 256, "p/é", "a/b/c"])
def test_rejects(text):
    with pytest.raises(InvalidSpecError) as info:
        ImageSpec.parse(text)
    assert "\n" not in str(info.value)


def test_image_spec_and_at():
    spec = ImageSpec("p", "i", "s")
    assert spec.image_spec == ImageSpec("p", "i")
    assert spec.image_spec.at("t") == ImageSpec("p", "i", "t")
