"""Gaps in the training data and code-cache tests found by mutation testing (issue 15, group ``train_data``).

Each test states behaviour of ``toklip_plugin/train/data.py`` or ``toklip_plugin/train/cache_file.py``
that the main test files left open; tests/MUTATION.md lists the mutants they kill.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import shutil
import tarfile
import warnings
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
from test_train_data import _numbered_rows, _row_ids  # rows numbered by their caption

from toklip_plugin.demo.synthetic import make_samples, write_csv, write_shards
from toklip_plugin.factory import create_vq, get_tokenizer
from toklip_plugin.resources import data_dir
from toklip_plugin.train import data as data_module
from toklip_plugin.train.cache_file import (
    FORMAT_VERSION,
    METADATA_KEY,
    CacheError,
    CacheWriter,
    cache_identity,
    check_cache_for_run,
    check_identity,
    read_cache_identity,
    read_code_cache,
)
from toklip_plugin.train.config import DataSection, load_train_config
from toklip_plugin.train.data import (
    SampleDecoder,
    SampleStream,
    StreamPosition,
    build_loader,
    resume_position,
    source_records,
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


# third round (the whole group run at once) -------------------------------------------------------------
def test_the_first_sample_of_a_shard_stream_is_drawn_from_the_whole_shuffle_buffer(tmp_path):
    """``shuffle_buffer`` samples are held before the first is yielded, so over seeds the first sample comes from
    anywhere in the first ``shuffle_buffer`` samples, not only from the first few."""
    pattern = write_shards(make_samples(300, seed=3, size=8), tmp_path, per_shard=300)
    config = DataSection(kind="wds", train=pattern, shuffle_buffer=256)
    firsts = [int(next(iter(SampleStream(config, lambda r: {"key": torch.tensor(int(r["__key__"]))}, 1,
                                          seed=seed)))["key"]) for seed in range(16)]
    assert all(0 <= key < 256 for key in firsts) and any(key >= 128 for key in firsts)


REBUILD = ("Rebuild it with this run's config: toklip-train --config CONFIG --build-cache NEW_DIR [the run's overrides], "
           "then train with data.kind=cache data.train=NEW_DIR")


def test_a_cache_for_another_text_setup_image_size_or_grid_is_refused_naming_each_difference():
    cached = _identity()
    run_text = {**cached.text, "context_length": 5}
    run = dataclasses.replace(cached, text=run_text, image_size=128, num_tokens=16)
    with pytest.raises(CacheError) as err:
        check_identity("codes.safetensors", cached, run)
    assert str(err.value) == (
        "code cache codes.safetensors was built with other frozen parts than this run uses, so its targets are not "
        f"this run's:\n  text: the cache's is {cached.text}, the run's is {run_text}\n"
        "  image_size: the cache's is 64, the run's is 128\n  num_tokens: the cache's is 4, the run's is 16\n" + REBUILD)


def test_a_run_distilling_two_targets_from_a_cache_without_teacher_names_both():
    run = _identity()
    run = dataclasses.replace(run, teacher={**run.teacher, "targets": ["teacher_pooled", "teacher_tokens"]})
    with pytest.raises(CacheError) as err:
        check_identity("c", dataclasses.replace(run, teacher=None), run)
    assert ("\n  teacher: the run distils (teacher_pooled, teacher_tokens) but the cache holds no teacher targets\n"
            in str(err.value))


def test_other_target_settings_are_named_with_the_caches_and_the_runs_values():
    settings = {"image_size": 64, "precision": "fp16", "vq_checkpoint": None}
    cached = dataclasses.replace(_identity(), target_config=settings, target_config_sha256="1")
    run = dataclasses.replace(_identity(), target_config={**settings, "precision": "fp32", "vq_checkpoint": "vq.pt"},
                              target_config_sha256="2")
    with pytest.warns(UserWarning) as caught:
        check_identity("c", cached, run)
    assert [str(w.message) for w in caught] == [
        ("code cache c was built under other target settings than this run's (precision, vq_checkpoint: "
         "['fp16', None] -> ['fp32', 'vq.pt']); the VQ and teacher weights are the same, so it is used")]


def test_a_file_holding_only_codes_is_refused_naming_the_keys_it_lacks(tmp_path):
    path = _write_file(tmp_path / "codes.safetensors", {"codes": _rows(2)["codes"]}, _identity())
    with pytest.raises(CacheError) as err:
        read_code_cache(path)
    assert str(err.value) == f"code cache {path} lacks ['text', 'teacher_pooled']; it holds ['codes']"


def test_an_empty_chunk_in_a_cache_directory_is_refused_naming_the_keys_it_lacks(tmp_path):
    chunk = _cache_of_two_chunks(tmp_path / "cache", {})
    with pytest.raises(CacheError) as err:
        read_code_cache(tmp_path / "cache")
    assert str(err.value) == f"code cache {chunk} lacks ['codes', 'text', 'teacher_pooled']; it holds []"


def test_another_teacher_with_fewer_targets_is_refused_naming_both_weights_and_the_missing_target():
    cached = _identity(teacher_sha="2" * 64)
    run = _identity(teacher_sha="4" * 64)
    run = dataclasses.replace(run, teacher={**run.teacher, "targets": ["teacher_pooled", "teacher_tokens"]})
    with pytest.raises(CacheError) as err:
        check_identity("c", cached, run)
    config = cached.teacher["config"]
    assert str(err.value).splitlines()[1:3] == [
        (f"  teacher: the cache's is {config} (weights sha256 222222222222), the run's is {config} "
         "(weights sha256 444444444444)"),
        "  teacher targets: the run needs ['teacher_tokens'], the cache holds ['teacher_pooled']"]


def test_a_cache_directory_checks_its_rows_against_its_identity(tmp_path):
    rows = _rows(3, first=3)
    rows["codes"][1, 2] = 1024  # the identity's codebook has 1024 codes; the others are 30..53 (records 3-5)
    chunk = _cache_of_two_chunks(tmp_path / "cache", rows)
    with pytest.raises(CacheError) as err:
        read_code_cache(tmp_path / "cache")
    assert str(err.value) == (f"code cache {chunk}: codes holds ids from 30 to 1024, outside the VQ codebook's "
                              f"[0, 1024); the cache was built for another model or is damaged. {REBUILD}")


def test_text_ids_outside_the_vocabulary_are_refused_naming_the_file_and_both_ranges(tmp_path):
    rows = _rows(2)
    rows["text"][0, 0] = 49408  # the identity's vocabulary has 49408 ids
    path = _write_file(tmp_path / "text.safetensors", rows, _identity())
    with pytest.raises(CacheError) as err:
        read_code_cache(path)
    assert str(err.value) == (f"code cache {path}: text holds ids from 0 to 49408, outside the text vocabulary's "
                              f"[0, 49408); the cache was built for another model or is damaged. {REBUILD}")


def test_a_chunk_of_another_build_in_a_cache_directory_is_refused_naming_it(tmp_path):
    chunk = _cache_of_two_chunks(tmp_path / "cache", _rows(3, first=3))
    _write_file(chunk, _rows(3, first=3), _identity(vq_sha="c" * 64))
    with pytest.raises(CacheError) as err:
        read_code_cache(tmp_path / "cache")
    assert str(err.value) == (f"code cache chunk {chunk} was built with other frozen parts than the rest of its cache; "
                              "the directory mixes builds: delete it and rebuild")
    _write_file(chunk, _rows(3, first=3), dataclasses.replace(_identity(), format=FORMAT_VERSION + 1))
    with pytest.raises(CacheError, match=f"^code cache {chunk} has format {FORMAT_VERSION + 1}, newer than"):
        read_code_cache(tmp_path / "cache")


def test_a_cache_file_of_a_newer_format_is_refused_naming_the_file(tmp_path):
    path = _write_file(tmp_path / "newer.safetensors", _rows(2),
                       dataclasses.replace(_identity(), format=FORMAT_VERSION + 1))
    with pytest.raises(CacheError, match=f"^code cache {path} has format {FORMAT_VERSION + 1}, newer than"):
        read_code_cache(path)


def test_a_file_without_identity_is_read_with_a_warning_saying_what_cannot_be_checked(tmp_path):
    path = _write_file(tmp_path / "old.safetensors", _rows(2))
    with pytest.warns(UserWarning) as caught:
        read_code_cache(path)
    assert [str(w.message) for w in caught] == [
        (f"code cache {path} has no identity metadata (a file not written by toklip-train --build-cache, or by an "
         "older one): its VQ, teacher and code range cannot be checked against the run's; rebuild it with "
         "toklip-train --build-cache to have them checked")]


@pytest.mark.parametrize("name, rows", [("aux", "aux None, codes 2, teacher_pooled 2, text 2"),  # first by name
                                         ("step", "codes 2, step None, teacher_pooled 2, text 2")])
def test_a_scalar_tensor_in_a_cache_file_is_refused_listing_every_tensors_rows(tmp_path, name, rows):
    tensors = {key: value for key, value in _rows(2).items() if key != "record"}  # the file's order is its own
    path = _write_file(tmp_path / "scalar.safetensors", {**tensors, name: torch.tensor(7)}, _identity())
    with pytest.raises(CacheError) as err:
        read_code_cache(path)
    assert str(err.value) == (f"code cache {path} has rows of unequal length (every tensor needs one row per sample): "
                              f"{rows}")


def test_codes_that_are_not_one_row_of_ids_per_sample_are_refused_with_their_shape(tmp_path):
    path = _write_file(tmp_path / "flat.safetensors", {**_rows(2), "codes": torch.zeros(2, 4, 1, dtype=torch.long)},
                       _identity())
    with pytest.raises(CacheError) as err:
        read_code_cache(path)
    assert str(err.value) == f"code cache {path}: codes must be [samples, ids], got shape (2, 4, 1)"


def test_text_rows_of_another_width_are_refused_naming_the_text(tmp_path):
    path = _write_file(tmp_path / "long.safetensors", {**_rows(2), "text": torch.zeros(2, 4, dtype=torch.long)},
                       _identity())  # the identity's context length is 3
    with pytest.raises(CacheError) as err:
        read_code_cache(path)
    assert str(err.value) == f"code cache {path}: text rows hold 4 ids, the model takes 3"


def test_the_runs_check_names_the_cache_it_refuses(tmp_path):
    path = tmp_path / "codes.safetensors"
    config = load_train_config("toklip-tiny", [f"data.train={path}", "data.kind=cache", "loss.distill_weight=0"])
    vq = create_vq(config.model_config(), seed=0)
    run = cache_identity(config, vq, None)
    _write_file(path, {}, dataclasses.replace(run, vq={**run.vq, "sha256": "0" * 64}))  # only the metadata is read
    with pytest.raises(CacheError, match=f"^code cache {path} was built with other frozen parts than this run uses"):
        check_cache_for_run(config, vq, None)


def test_a_closed_writer_records_its_build_in_the_manifest(tmp_path):
    writer = CacheWriter(tmp_path / "cache", _identity(), rank=1, world_size=2, source="train.csv")
    writer.add(_rows(2))
    manifest = writer.close()
    assert manifest == {"format": FORMAT_VERSION, "rank": 1, "world_size": 2, "source": "train.csv", "samples": 2,
                        "skipped": 0, "chunks": [{"file": "r00001-of-00002-c00000.safetensors", "rows": 2}],
                        "identity": dataclasses.asdict(_identity())}
    assert json.loads((tmp_path / "cache" / "r00001-of-00002.json").read_text()) == manifest


def test_a_position_after_each_consumed_batch_holds_its_cursor_the_next_worker_and_the_count():
    position = StreamPosition.start(rank=0, world_size=1, workers=3)
    position = position.after(torch.tensor([0, 0, 5]))  # batch["cursor"]: (worker, epoch, records read)
    assert position == StreamPosition(0, 1, ((0, 5), (0, 0), (0, 0)), next_worker=1, batches=1)
    position = position.after([1, 0, 4]).after([2, 1, 2])
    assert position == StreamPosition(0, 1, ((0, 5), (0, 4), (1, 2)), next_worker=0, batches=3)


def test_a_directory_holding_builds_over_different_numbers_of_ranks_is_refused_naming_them(tmp_path):
    for world_size in (1, 2):
        for rank in range(world_size):
            writer = CacheWriter(tmp_path / f"over{world_size}", _identity(), rank=rank, world_size=world_size)
            writer.add(_rows(1, first=rank))
            writer.close()
    for path in (tmp_path / "over2").iterdir():  # what copying one build into another's folder leaves
        shutil.copy(path, tmp_path / "over1")
    with pytest.raises(CacheError) as err:
        read_code_cache(tmp_path / "over1")
    assert str(err.value) == f"{tmp_path / 'over1'} mixes builds over [1, 2] ranks; delete it and rebuild"


def test_the_loader_reads_the_stream_of_the_runs_seed(tmp_path):
    config = DataSection(kind="csv", train=str(write_csv(make_samples(8, seed=4, size=16), tmp_path)))
    transform = image_transform(16)
    loader = build_loader(config, transform, TOKENIZER, batch_size=8, position=StreamPosition(), seed=3)
    stream = SampleStream(config, SampleDecoder(config, transform, TOKENIZER), 8, StreamPosition(), seed=3)
    from_loader, expected = next(iter(loader)), next(iter(stream))
    assert torch.equal(from_loader["text"], expected["text"])  # the same shuffled order: seed 3's
    assert not torch.equal(expected["text"], next(iter(SampleStream(config, SampleDecoder(config, transform, TOKENIZER),
                                                                    8, StreamPosition(), seed=0)))["text"])


def test_a_build_missing_many_ranks_names_the_first_four_manifests_it_lacks(tmp_path):
    writer = CacheWriter(tmp_path / "cache", _identity(), rank=0, world_size=6)
    writer.add(_rows(2))
    writer.close()
    with pytest.raises(CacheError) as err:
        read_code_cache(tmp_path / "cache")
    assert str(err.value) == (
        f"{tmp_path / 'cache'} is a build over 6 ranks, but rank(s) [1, 2, 3, 4, 5] have not finished (no "
        "r00001-of-00006.json, r00002-of-00006.json, r00003-of-00006.json, r00004-of-00006.json): run the build for "
        "them (same command, RANK set), or rebuild")


# the stream's slots, epochs and draws ---------------------------------------------------------------------
def _ids(stream, batches: int) -> list[list[int]]:
    return [batch["id"].tolist() for batch in itertools.islice(stream, batches)]


def test_a_position_for_another_number_of_workers_is_refused_naming_the_fix(tmp_path):
    stream = SampleStream(_numbered_rows(tmp_path, 4), _row_ids, 2, StreamPosition(0, 1, ((0, 0), (0, 0))))
    with pytest.raises(ValueError) as err:
        next(iter(stream))
    assert str(err.value) == "the position holds cursors for 2 workers, the loader has 1; convert it with resume_position"


def test_a_stream_resumed_from_a_checkpoint_without_cursors_replays_and_drops_the_batches_before_it(tmp_path):
    config = _numbered_rows(tmp_path, 12)
    full = _ids(SampleStream(config, _row_ids, 4, seed=3), 5)
    resumed = SampleStream(config, _row_ids, 4, StreamPosition(0, 1, (None,), next_worker=0, batches=3), seed=3)
    assert _ids(resumed, 2) == full[3:5]  # epoch 1's first two batches


def test_every_epoch_is_reshuffled(tmp_path):
    epochs = _ids(SampleStream(_numbered_rows(tmp_path, 16), _row_ids, 16, seed=3), 3)
    assert all(sorted(ids) == list(range(16)) for ids in epochs)
    assert len({tuple(ids) for ids in epochs}) == 3


def test_each_samples_random_draw_depends_on_the_seed_epoch_slot_and_position(tmp_path):
    """A sample's augmentation draws from its own generator: (seed, epoch, slot, position) all count."""
    config = _numbered_rows(tmp_path, 4)

    def draws(seed: int, rank: int = 0, world_size: int = 1) -> list[list[float]]:
        position = StreamPosition(rank, world_size, ((0, 0),))
        stream = SampleStream(config, lambda record: {"draw": torch.rand(())}, 4 // world_size, position, seed)
        return [batch["draw"].tolist() for batch in itertools.islice(stream, 2)]  # two epochs

    (first, second), other_seed = draws(3), draws(4)
    assert len(set(first)) == 4 and not set(first) & set(second) and not set(first) & set(other_seed[0])
    assert draws(3, 0, 2)[0] != draws(3, 1, 2)[0]  # two ranks' samples at the same positions


def test_a_source_without_a_usable_sample_is_refused_naming_it_the_slot_and_the_epoch(tmp_path):
    config = _numbered_rows(tmp_path, 3)

    def broken(record):
        raise OSError("unreadable image")

    with pytest.raises(RuntimeError) as err:
        next(iter(SampleStream(config, broken, 2)))
    assert str(err.value) == (f"data source {config.train!r} gave no usable sample to slot 0 of 1 in epoch 0 "
                              "(empty, or every sample failed to decode)")


def test_a_stream_resumed_right_after_the_only_usable_sample_of_an_epoch_goes_on_into_the_next(tmp_path):
    config = _numbered_rows(tmp_path, 4)
    first = _ids(SampleStream(config, _row_ids, 1, seed=3), 1)[0][0]  # the epoch's first record

    def only_first(record):
        if int(record["caption"]) != first:
            raise OSError("unreadable image")
        return _row_ids(record)

    resumed = SampleStream(config, only_first, 1, StreamPosition(0, 1, ((0, 1),)), seed=3)
    batch = next(iter(resumed))
    worker, epoch, read = batch["cursor"].tolist()
    assert batch["id"].tolist() == [first] and (worker, epoch) == (0, 1)
    assert batch["skipped"] == 3 + read - 1  # the rest of epoch 0, then epoch 1's records before it


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")  # more than the 2 cores here
def test_three_workers_read_each_record_once_per_epoch_and_resume_in_the_uninterrupted_order(tmp_path):
    config = _numbered_rows(tmp_path, 12)

    def loader(position):  # build_loader's DataLoader over numbered rows
        stream = SampleStream(config, _row_ids, 2, position, seed=3)
        return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=3)

    full = [b["id"].tolist() for b in itertools.islice(loader(StreamPosition.start(0, 1, 3)), 8)]
    assert sorted(itertools.chain(*full[:6])) == list(range(12))  # epoch 0: 6 batches of 2 over 3 workers
    position = StreamPosition.start(0, 1, 3)
    for batch in itertools.islice(loader(position), 4):
        position = position.after(batch["cursor"])
    assert [b["id"].tolist() for b in itertools.islice(loader(position), 4)] == full[4:8]


def test_a_stream_without_a_seed_reads_seed_zeros_order(tmp_path):
    config = _numbered_rows(tmp_path, 16)
    assert _ids(SampleStream(config, _row_ids, 16), 2) == _ids(SampleStream(config, _row_ids, 16, seed=0), 2)
    assert _ids(SampleStream(config, _row_ids, 16), 2) != _ids(SampleStream(config, _row_ids, 16, seed=1), 2)


def _train_config(tmp_path: Path, *overrides: str):
    return load_train_config("toklip-tiny", [f"data.train={tmp_path / 'codes'}", "data.kind=cache", *overrides])


def test_a_run_distilling_tokens_too_stores_both_teacher_targets_in_its_identity(tmp_path):
    config = _train_config(tmp_path, "loss.distill_weight=1", "loss.token_distill_weight=0.5")
    vq, teacher = create_vq(config.model_config(), seed=0), torch.nn.Linear(2, 2)
    identity = cache_identity(config, vq, teacher)
    assert identity.teacher["targets"] == identity.target_config["teacher_targets"] == ["teacher_pooled",
                                                                                        "teacher_tokens"]
    assert identity.target_config["teacher"] == dataclasses.asdict(config.teacher)


def test_the_target_settings_hash_changes_with_the_settings(tmp_path):
    vq = create_vq(_train_config(tmp_path).model_config(), seed=0)
    identities = [cache_identity(_train_config(tmp_path, "loss.distill_weight=0", f"run.precision={precision}"), vq,
                                 None) for precision in ("fp32", "bf16")]
    assert identities[0].target_config["precision"] == "fp32"
    assert identities[0].target_config_sha256 != identities[1].target_config_sha256


def test_a_runs_identity_records_the_text_setup_and_the_target_settings_by_name(tmp_path):
    """The fields every chunk's metadata holds; a cache built by an earlier version compares against them."""
    config = _train_config(tmp_path, "loss.distill_weight=0", "run.precision=fp32")
    identity = cache_identity(config, create_vq(config.model_config(), seed=0), None)
    text = {"tokenizer": {"kind": "open_clip_bpe"}, "context_length": 16, "vocab_size": 49408}
    assert identity.text == text
    assert identity.target_config == {"vq": config.model_config().to_dict()["vq"], "vq_checkpoint": None,
                                      "image_size": 128, "text": text, "teacher_targets": [], "teacher": None,
                                      "precision": "fp32"}


def test_an_identity_for_a_distilling_run_needs_the_teacher(tmp_path):
    config = _train_config(tmp_path, "loss.distill_weight=1")
    with pytest.raises(ValueError) as err:
        cache_identity(config, create_vq(config.model_config(), seed=0), None)
    assert str(err.value) == "the loss distils towards a teacher, but no teacher was given"


def test_the_image_sources_give_their_rows_and_a_cache_is_refused_as_one(tmp_path):
    config = _numbered_rows(tmp_path, 3)
    assert [row["caption"] for row in source_records(config)] == ["0", "1", "2"]
    with pytest.raises(ValueError) as err:
        list(source_records(DataSection(kind="cache", train=str(tmp_path / "codes"))))
    assert str(err.value) == ("data.kind=cache holds no images to read; give the webdataset or CSV/JSONL source")


def test_a_writer_refuses_a_rank_outside_the_world_a_chunk_size_of_zero_or_a_file_saying_which(tmp_path):
    with pytest.raises(ValueError) as err:
        CacheWriter(tmp_path / "cache", _identity(), rank=2, world_size=2)
    assert str(err.value) == "rank 2 is not in [0, 2) (world_size 2)"
    with pytest.raises(ValueError) as err:
        CacheWriter(tmp_path / "cache", _identity(), chunk_bytes=0)
    assert str(err.value) == "chunk_bytes must be positive, got 0"
    (tmp_path / "codes.safetensors").write_bytes(b"")
    with pytest.raises(CacheError) as err:
        CacheWriter(tmp_path / "codes.safetensors", _identity())
    assert str(err.value) == (f"{tmp_path / 'codes.safetensors'} is a file (a single-file cache?); give a directory "
                              "for the new cache")


def test_a_writer_makes_missing_parents_names_no_source_by_default_and_keeps_other_builds(tmp_path):
    writer = CacheWriter(tmp_path / "new" / "cache", _identity())
    writer.add(_rows(1))
    assert writer.close()["source"] == ""
    for rank in (0, 1):
        CacheWriter(tmp_path / "two", _identity(), rank=rank, world_size=2).close()
    with pytest.raises(CacheError) as err:
        CacheWriter(tmp_path / "two", _identity())
    assert str(err.value) == (f"{tmp_path / 'two'} holds a build over another number of ranks (r00000-of-00002.json, "
                              "...); delete it or choose another directory")


# fourth round: what the decoder refuses, CSV line breaks, the target-settings hash -------------------
def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_samples_without_an_image_or_with_an_empty_caption_are_skipped_and_counted(tmp_path):
    shard = tmp_path / "mixed-00000.tar"
    with tarfile.open(shard, "w") as tar:  # in order: good, no image, good, blank caption, good
        for key, members in [("0", {"png": _png(), "txt": b"first"}), ("1", {"txt": b"no image here"}),
                             ("2", {"png": _png(), "txt": b"second"}), ("3", {"png": _png(), "txt": b"  \n"}),
                             ("4", {"png": _png(), "txt": b"third"})]:
            for ext, data in members.items():
                _add(tar, f"{key}.{ext}", data)
    config = DataSection(kind="wds", train=str(shard), shuffle_buffer=0)
    stream = SampleStream(config, SampleDecoder(config, image_transform(128), TOKENIZER), 3)
    batch = next(iter(stream))
    assert int(batch["skipped"]) == 2
    assert torch.equal(batch["text"], TOKENIZER(["first", "second", "third"]))
    assert batch["images"].shape == (3, 3, 128, 128)


def test_the_decoders_errors_name_the_sample_the_shard_or_the_caption(tmp_path):
    decode = SampleDecoder(DataSection(kind="wds", train=str(tmp_path / "a.tar")), image_transform(128), TOKENIZER)
    with pytest.raises(KeyError) as err:
        decode({"__key__": "00000042", "txt": b"a caption"})
    message = err.value.args[0]
    assert "00000042" in message and "image" in message and all(key in message for key in ("jpg", "png", "webp"))
    damaged = data_module.DamagedShard(str(tmp_path / "b-00003.tar"), "ReadError: unexpected end of data")
    with pytest.warns(UserWarning) as warned, pytest.raises(OSError) as err:
        decode(damaged)
    assert damaged.url in str(err.value)
    text = str(warned[0].message)
    assert damaged.url in text and damaged.error in text and "skipped" in text and "counted" in text
    with pytest.raises(ValueError) as err:
        decode({"__key__": "7", "png": _png(), "txt": b" "})
    assert "caption" in str(err.value)


@pytest.mark.parametrize("caption", ["", "  \t", None, 7, ["a", "list"]])
def test_a_jsonl_row_whose_caption_is_empty_or_not_text_is_refused_as_a_broken_sample(tmp_path, caption):
    Image.open(io.BytesIO(_png())).save(tmp_path / "square.png")
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"image": "square.png", "caption": caption}) + "\n")
    decode = SampleDecoder(DataSection(kind="jsonl", train=str(path)), image_transform(128), TOKENIZER)
    with pytest.raises(ValueError) as err:
        decode(data_module.read_rows(str(path), "jsonl")[0])
    assert "caption" in str(err.value)
    assert torch.equal(decode({"image": "square.png", "caption": "a square"})["text"], TOKENIZER(["a square"])[0])


def test_an_image_below_min_size_is_refused_naming_its_size_and_the_threshold(tmp_path):
    decode = SampleDecoder(DataSection(kind="wds", train=str(tmp_path / "a.tar"), min_size=200),
                           image_transform(128), TOKENIZER)
    with pytest.raises(ValueError) as err:  # _png() is 128 x 128
        decode({"__key__": "1", "png": _png(), "txt": b"a square"})
    assert "128x128" in str(err.value) and "200" in str(err.value)


def test_a_csv_caption_holding_line_breaks_is_read_back_exactly(tmp_path):
    captions = ["one line", "windows\r\nline break", "unix\nbreak", "old mac\rbreak"]
    path = tmp_path / "rows.csv"
    with open(path, "w", newline="") as f:  # the csv module's own quoting
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows([f"{i}.png", caption] for i, caption in enumerate(captions))
    assert [row["caption"] for row in data_module.read_rows(str(path), "csv")] == captions
    assert [row["caption"] for row in source_records(DataSection(kind="csv", train=str(path)))] == captions


def test_the_target_settings_hash_does_not_depend_on_the_key_order_of_the_model_config_file(tmp_path):
    """A config file listing its tokenizer section's keys in another order names the same targets: a cache built
    under one is used under the other without a warning."""
    model = json.loads((data_dir("configs") / "models" / "toklip-tiny.json").read_text())
    tokenizer = {"kind": "hf", "name": "timm/ViT-B-16-SigLIP2-256", "kwargs": {"clean": "canonicalize"},
                 "revision": "main"}
    identities = []
    for name, section in (("a", tokenizer), ("b", dict(reversed(list(tokenizer.items()))))):
        (tmp_path / f"{name}.json").write_text(json.dumps({**model, "tokenizer": section}))
        config = _train_config(tmp_path, "loss.distill_weight=0", f"model.name={tmp_path / name}.json")
        identities.append(cache_identity(config, create_vq(config.model_config(), seed=0), None))
    assert list(identities[0].text["tokenizer"]) != list(identities[1].text["tokenizer"])  # the files' orders
    assert identities[0].target_config_sha256 == identities[1].target_config_sha256
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_identity("codes", identities[0], identities[1])
