"""Gaps in the training data and code-cache tests found by mutation testing (issue 15, group ``train_data``).

Each test states behaviour of ``toklip_plugin/train/data.py`` or ``toklip_plugin/train/cache_file.py``
that the main test files left open; tests/MUTATION.md lists the mutants they kill.
"""
from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from test_train_cache_file import (  # the cache-format test's rows and identity
    _identity,
    _rows,
    _write_file,
)

from toklip_plugin.demo.synthetic import make_samples, write_shards
from toklip_plugin.factory import get_tokenizer
from toklip_plugin.train import data as data_module
from toklip_plugin.train.cache_file import (
    FORMAT_VERSION,
    METADATA_KEY,
    CacheError,
    CacheWriter,
    read_cache_identity,
    read_code_cache,
)
from toklip_plugin.train.config import DataSection
from toklip_plugin.train.data import (
    SampleDecoder,
    SampleStream,
    StreamPosition,
    resume_position,
)
from toklip_plugin.transforms import image_transform

TOKENIZER = get_tokenizer("toklip-tiny")


# resuming --------------------------------------------------------------------------------------------
def test_resuming_under_the_same_layout_takes_this_ranks_cursors_and_the_saved_counters():
    saved = {"cursors": [[0, 1], [0, 2], [1, 3], [1, 4]], "workers": 2, "next_worker": 1, "batches": 7}
    assert resume_position(saved, 2, 1, 2, 2) == StreamPosition(1, 2, ((1, 3), (1, 4)), next_worker=1, batches=7)
    assert resume_position(saved, 2, 0, 2, 2) == StreamPosition(0, 2, ((0, 1), (0, 2)), next_worker=1, batches=7)
    assert resume_position(saved, 2, 0, 1, 1).batches == 7  # another layout keeps the count of batches too


def test_an_old_checkpoint_on_another_number_of_ranks_is_refused_naming_the_fix():
    with pytest.raises(ValueError) as err:
        resume_position({"batches": 5}, 2, 0, 1, 1)
    assert str(err.value) == ("it was written by 2 ranks before data cursors were saved, and this run has 1: resume "
                              "it with 2 processes (or start a new run.output_dir)")


# shards ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("error, text", [(tarfile.ReadError("x" * 400), ("ReadError: " + "x" * 400)[:300]),
                                         (EOFError(), "EOFError: ")])
def test_a_shard_that_fails_to_read_is_reported_by_its_error_type_and_first_argument_within_300_characters(
        monkeypatch, error, text):
    from webdataset import tariterators

    def unreadable(sources):
        raise error
        yield  # a generator, as webdataset's

    monkeypatch.setattr(tariterators, "tarfile_samples", unreadable)
    assert list(data_module._shard_samples(["a.tar"])) == [data_module.DamagedShard("a.tar", text)]


def _keys_of_the_first_epoch(pattern: str, rank: int, world_size: int) -> set[int]:
    stream = SampleStream(DataSection(kind="wds", train=pattern, shuffle_buffer=4),
                          lambda record: {"key": torch.tensor(int(record["__key__"]))}, 1,
                          StreamPosition(rank, world_size, ((0, 0),)))
    keys = set()
    for batch in stream:
        if int(batch["cursor"][1]) > 0:
            return keys
        keys.add(int(batch["key"]))


@pytest.mark.parametrize("shards, ranks", [(2, 2), (1, 3)])
def test_ranks_read_whole_shards_when_there_are_enough_else_every_nth_sample(tmp_path, shards, ranks):
    pattern = write_shards(make_samples(6, seed=2, size=16), tmp_path, per_shard=6 // shards)
    read = [_keys_of_the_first_epoch(pattern, rank, ranks) for rank in range(ranks)]
    assert set().union(*read) == set(range(6)) and sum(map(len, read)) == 6  # each sample once
    if shards == ranks:  # one shard each
        assert sorted(sorted(keys) for keys in read) == [[0, 1, 2], [3, 4, 5]]
    else:
        assert [len(keys) for keys in read] == [2, 2, 2]


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (128, 128), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_webdataset_caption_comes_from_txt_or_the_json_caption_key_else_the_sample_is_named(tmp_path):
    decode = SampleDecoder(DataSection(kind="wds", train=str(tmp_path / "a.tar"), caption_key="alt"),
                           image_transform(128), TOKENIZER)
    caption = json.dumps({"alt": "a green square", "caption": "not this one"}).encode()
    assert torch.equal(decode({"__key__": "7", "png": _png(), "json": caption})["text"],
                       TOKENIZER(["a green square"])[0])
    with pytest.raises(KeyError) as err:
        decode({"__key__": "00000007", "png": _png()})
    assert err.value.args == ("sample 00000007 has no caption (txt or json)",)


# the code cache --------------------------------------------------------------------------------------
def _identity_text(**changes) -> str:
    data = {**dataclasses.asdict(_identity()), **changes}
    return json.dumps({k: v for k, v in data.items() if v is not None})


def test_a_cache_identity_without_a_format_number_reads_and_a_newer_format_is_refused(tmp_path):
    rows = {k: v for k, v in _rows(2).items() if k != "record"}
    old = tmp_path / "old.safetensors"
    save_file(rows, str(old), metadata={METADATA_KEY: _identity_text(format=None)})
    assert read_cache_identity(old) == _identity()
    newer = tmp_path / "newer.safetensors"
    save_file(rows, str(newer), metadata={METADATA_KEY: _identity_text(format=FORMAT_VERSION + 1)})
    with pytest.raises(CacheError) as err:
        read_cache_identity(newer)
    assert str(err.value) == (f"code cache {newer} has format {FORMAT_VERSION + 1}, newer than this toklip-plugin "
                              f"reads ({FORMAT_VERSION}); upgrade toklip-plugin or rebuild the cache")


def test_a_missing_cache_file_says_how_to_build_one(tmp_path):
    path = tmp_path / "codes.safetensors"
    with pytest.raises(FileNotFoundError) as err:
        read_code_cache(path)
    assert str(err.value) == (f"code cache {path} does not exist; build one with toklip-train --config CONFIG "
                              f"--build-cache {path} data.train=SOURCE")


def _cache_of_two_chunks(directory: Path, second: dict[str, torch.Tensor]) -> Path:
    """A one-rank cache directory whose second chunk file is replaced by ``second`` (same identity)."""
    writer = CacheWriter(directory, _identity(), chunk_bytes=3 * 72)
    writer.add(_rows(6))
    chunks = [directory / chunk["file"] for chunk in writer.close()["chunks"]]
    assert len(chunks) == 2
    _write_file(chunks[1], second, _identity())
    return chunks[1]


def test_a_record_stored_twice_is_refused_naming_it(tmp_path):
    _cache_of_two_chunks(tmp_path / "cache", _rows(3, first=2))  # records 2, 3, 4 after 0, 1, 2
    with pytest.raises(CacheError) as err:
        read_code_cache(tmp_path / "cache")
    assert str(err.value) == (f"code cache {tmp_path / 'cache'}: record 2 is stored twice; the directory mixes builds: "
                              "delete it and rebuild")
    rows = _rows(3)
    rows["record"] = torch.tensor([0, 1, 1])
    _write_file(tmp_path / "one.safetensors", rows, _identity())  # a single file names its folder too
    with pytest.raises(CacheError, match=rf"^code cache {tmp_path}: record 1 is stored twice"):
        read_code_cache(tmp_path / "one.safetensors")


def test_chunks_with_other_keys_or_row_types_are_refused_naming_both(tmp_path):
    rows = _rows(3, first=3)
    chunk = _cache_of_two_chunks(tmp_path / "keys", {**rows, "teacher_tokens": torch.zeros(3, 4, 2)})
    with pytest.raises(CacheError) as err:
        read_code_cache(tmp_path / "keys")
    assert str(err.value) == (f"code cache chunk {chunk} holds ['codes', 'teacher_pooled', 'teacher_tokens', 'text'], "
                              "the chunks before it ['codes', 'teacher_pooled', 'text']; the directory mixes builds: "
                              "delete it and rebuild")
    chunk = _cache_of_two_chunks(tmp_path / "types", {**rows, "teacher_pooled": rows["teacher_pooled"][:, :1].double()})
    with pytest.raises(CacheError) as err:
        read_code_cache(tmp_path / "types")
    assert str(err.value) == (f"code cache chunk {chunk}: teacher_pooled rows are torch.float64 (1,), those before it "
                              "torch.float32 (2,)")


def test_a_file_without_tensors_is_refused_naming_the_missing_keys(tmp_path):
    path = _write_file(tmp_path / "empty.safetensors", {}, _identity())
    with pytest.raises(CacheError, match=r"lacks \['codes', 'text', 'teacher_pooled'\]; it holds \[\]"):
        read_code_cache(path)


def test_a_cache_of_zero_rows_reads_as_empty_tensors(tmp_path):
    path = _write_file(tmp_path / "none.safetensors", _rows(0), _identity())
    tensors = read_code_cache(path)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {"codes": (0, 4), "text": (0, 3),
                                                               "teacher_pooled": (0, 2)}


def test_rows_of_another_width_or_integer_teacher_targets_are_refused_saying_which(tmp_path):
    rows = _rows(2)
    wide = _write_file(tmp_path / "wide.safetensors", {**rows, "codes": torch.zeros(2, 5, dtype=torch.long)},
                       _identity())
    with pytest.raises(CacheError) as err:
        read_code_cache(wide)
    assert str(err.value) == f"code cache {wide}: codes rows hold 5 ids, the model takes 4"
    ints = _write_file(tmp_path / "ints.safetensors", {**rows, "teacher_pooled": torch.zeros(2, 2, dtype=torch.long)},
                       _identity())
    with pytest.raises(CacheError) as err:
        read_code_cache(ints)
    assert str(err.value) == f"code cache {ints}: teacher_pooled must hold floats, got torch.int64"


def test_non_finite_teacher_rows_are_counted_and_the_first_five_named(tmp_path):
    rows = _rows(8)
    rows["teacher_pooled"][[0, 1, 3, 4, 5, 6, 7]] = float("nan")
    path = _write_file(tmp_path / "nan.safetensors", rows, _identity())
    with pytest.warns(UserWarning) as caught:
        read_code_cache(path)
    expected = (f"code cache {path}: teacher_pooled is not finite (NaN or inf) in 7 row(s), e.g. [0, 1, 3, 4, 5]; "
                "the training steps whose batches hold them will be skipped as non-finite. Rebuild the cache with "
                "toklip-train --build-cache, which skips such samples")
    assert [str(w.message) for w in caught] == [expected]


def test_an_unreadable_shard_is_reported_with_the_os_errors_text_not_its_errno(tmp_path):
    from toklip_plugin.train.data import DamagedShard, _shard_samples

    gone = tmp_path / "gone.tar"  # removed between the shard check and the read
    (damaged,) = list(_shard_samples([str(gone)]))
    assert isinstance(damaged, DamagedShard) and damaged.url == str(gone)
    expected = FileNotFoundError(2, "No such file or directory").strerror
    assert damaged.error == f"FileNotFoundError: {expected}"
