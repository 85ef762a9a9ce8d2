"""The code-cache format: chunked writes of bounded size, validation on read, identity comparison."""
from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch
from safetensors.torch import save_file

from toklip_plugin.train.cache_file import (METADATA_KEY, CacheError, CacheIdentity, CacheWriter, check_identity,
                                            module_sha256, read_cache_identity, read_code_cache)

CODEBOOK, VOCAB, TOKENS, CONTEXT = 1024, 49408, 4, 3


def _identity(vq_sha: str = "a" * 64, teacher_sha: str | None = "b" * 64, precision: str = "fp32") -> CacheIdentity:
    teacher = {"config": {"open_clip": None}, "sha256": teacher_sha, "targets": ["teacher_pooled"]}
    target_config = {"precision": precision}
    return CacheIdentity(
        vq={"model": "toklip-tiny", "checkpoint": None, "codebook_size": CODEBOOK, "sha256": vq_sha},
        teacher=teacher if teacher_sha else None,
        text={"tokenizer": {"kind": "open_clip_bpe"}, "context_length": CONTEXT, "vocab_size": VOCAB},
        image_size=64, num_tokens=TOKENS, target_config=target_config,
        target_config_sha256=json.dumps(target_config))


def _rows(count: int, first: int = 0) -> dict[str, torch.Tensor]:
    """``count`` rows whose every value is derived from the record number (first .. first + count - 1)."""
    record = torch.arange(first, first + count)
    return {"codes": (record[:, None] * 10 + torch.arange(TOKENS)) % CODEBOOK,
            "text": record[:, None].repeat(1, CONTEXT), "teacher_pooled": record[:, None].float().repeat(1, 2),
            "record": record}


def _write_file(path, tensors: dict, identity: CacheIdentity | None = None):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={METADATA_KEY: identity.to_json()} if identity else None)
    return path


def test_the_writer_holds_less_than_one_chunk_and_writes_chunks_of_the_chunk_size(tmp_path):
    row_bytes = sum(v[:1].numel() * v.element_size() for v in _rows(1).values())  # 4*8 + 3*8 + 2*4 + 8 = 72
    writer = CacheWriter(tmp_path / "cache", _identity(), chunk_bytes=4 * row_bytes + row_bytes // 2)
    held = []
    for batch in range(10):  # 30 rows in batches of 3, chunks of 4 rows
        writer.add(_rows(3, first=3 * batch))
        held.append(writer.held_rows)
    manifest = writer.close(skipped=2)
    assert max(held) < 4  # never a whole chunk in memory: it goes to disk as soon as it is full
    assert [c["rows"] for c in manifest["chunks"]] == [4, 4, 4, 4, 4, 4, 4, 2]
    assert (manifest["samples"], manifest["skipped"]) == (30, 2)
    assert torch.equal(read_code_cache(tmp_path / "cache")["codes"], _rows(30)["codes"])


def test_ranks_written_in_any_order_read_back_in_record_order(tmp_path):
    identity, rows = _identity(), _rows(7)
    for rank in (1, 0):  # rank 1 holds the odd records, rank 0 the even ones
        writer = CacheWriter(tmp_path / "cache", identity, rank=rank, world_size=2, chunk_bytes=100)
        writer.add({key: value[rank::2] for key, value in rows.items()})
        writer.close()
    read = read_code_cache(tmp_path / "cache")
    assert set(read) == {"codes", "text", "teacher_pooled"}  # the record positions are not a training input
    assert all(torch.equal(read[key], rows[key]) for key in read)
    assert read_cache_identity(tmp_path / "cache") == identity


def test_every_chunk_carries_the_identity_and_ranks_of_other_frozen_parts_are_refused(tmp_path):
    writer = CacheWriter(tmp_path / "cache", _identity(), rank=0, world_size=2, chunk_bytes=1)
    writer.add(_rows(2))
    writer.close()
    chunk = sorted((tmp_path / "cache").glob("*.safetensors"))[0]
    assert read_cache_identity(chunk) == _identity()  # a chunk read on its own says what it was built with
    other = CacheWriter(tmp_path / "cache", _identity(vq_sha="c" * 64), rank=1, world_size=2)
    other.add(_rows(1, first=2))
    other.close()
    with pytest.raises(CacheError, match="ranks of .* were built with other frozen parts"):
        read_code_cache(tmp_path / "cache")


def test_a_build_missing_a_rank_is_refused_naming_it(tmp_path):
    writer = CacheWriter(tmp_path / "cache", _identity(), rank=0, world_size=3)
    writer.add(_rows(2))
    writer.close()
    with pytest.raises(CacheError, match=r"rank\(s\) \[1, 2\] have not finished.*r00001-of-00003.json"):
        read_code_cache(tmp_path / "cache")


def test_an_interrupted_build_without_manifest_is_refused(tmp_path):
    writer = CacheWriter(tmp_path / "cache", _identity(), chunk_bytes=1)
    writer.add(_rows(3))  # three one-row chunks on disk, never closed
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 3
    with pytest.raises(CacheError, match="no finished code-cache build"):
        read_code_cache(tmp_path / "cache")


def test_a_directory_of_another_world_size_is_not_written_over(tmp_path):
    CacheWriter(tmp_path / "cache", _identity(), rank=0, world_size=2, chunk_bytes=1).add(_rows(1))  # on disk
    with pytest.raises(CacheError, match="another number of ranks"):
        CacheWriter(tmp_path / "cache", _identity(), rank=0, world_size=1)


def test_rows_of_unequal_length_are_refused_naming_the_keys_and_lengths(tmp_path):
    rows = _rows(5)
    rows["text"] = rows["text"][:4]
    with pytest.raises(CacheError, match="unequal length.*codes 5.*record 5.*teacher_pooled 5.*text 4"):
        read_code_cache(_write_file(tmp_path / "c.safetensors", rows, _identity()))


@pytest.mark.parametrize("bad", [CODEBOOK, -1, 10**6])
def test_codes_outside_the_codebook_are_refused_with_the_range_found_and_the_valid_one(tmp_path, bad):
    rows = _rows(5)
    rows["codes"][3, 1] = bad
    low, high = min(bad, 0), max(bad, int(_rows(5)["codes"].max()))
    with pytest.raises(CacheError, match=rf"codes holds ids from {low} to {high}, outside the VQ codebook's "
                                         rf"\[0, {CODEBOOK}\)"):
        read_code_cache(_write_file(tmp_path / "c.safetensors", rows, _identity()))


def test_float_codes_and_missing_keys_are_refused(tmp_path):
    rows = _rows(2)
    with pytest.raises(CacheError, match="codes must hold integer ids, got torch.float32"):
        read_code_cache(_write_file(tmp_path / "a.safetensors", {**rows, "codes": rows["codes"].float()}, _identity()))
    without_teacher = {k: v for k, v in rows.items() if k != "teacher_pooled"}  # its identity lists teacher targets
    with pytest.raises(CacheError, match=r"lacks \['teacher_pooled'\]"):
        read_code_cache(_write_file(tmp_path / "b.safetensors", without_teacher, _identity()))


def test_nonfinite_teacher_targets_are_named_in_a_warning(tmp_path):
    rows = _rows(6)
    rows["teacher_pooled"][4, 1] = float("nan")
    rows["teacher_pooled"][1, 0] = float("inf")
    with pytest.warns(UserWarning, match=r"teacher_pooled is not finite \(NaN or inf\) in 2 row\(s\), e.g. \[1, 4\]"):
        read_code_cache(_write_file(tmp_path / "c.safetensors", rows, _identity()))


def test_a_file_without_identity_reads_with_a_warning_and_its_codes_still_checked(tmp_path):
    rows = {k: v for k, v in _rows(3).items() if k != "record"}
    with pytest.warns(UserWarning, match="no identity metadata"):
        read = read_code_cache(_write_file(tmp_path / "old.safetensors", rows))
    assert all(torch.equal(read[k], rows[k]) for k in rows)
    rows["codes"][0, 0] = -5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CacheError, match=r"from -5 to .*outside the VQ codebook's \[0, \.\.\.\)"):
            read_code_cache(_write_file(tmp_path / "neg.safetensors", rows))


def test_another_vq_or_teacher_is_refused_naming_both_identities_and_the_fix():
    cache, run = _identity(vq_sha="1" * 64, teacher_sha="2" * 64), _identity(vq_sha="3" * 64, teacher_sha="4" * 64)
    with pytest.raises(CacheError) as err:
        check_identity("c", cache, run)
    message = str(err.value)
    assert "VQ: the cache's is toklip-tiny" in message and "111111111111" in message and "333333333333" in message
    assert "teacher: " in message and "222222222222" in message and "444444444444" in message
    assert "--build-cache" in message
    check_identity("c", run, run)  # the same frozen parts: accepted
    check_identity("c", run, dataclasses.replace(run, teacher=None))  # a run that does not distil needs no teacher
    with pytest.raises(CacheError, match="the run distils .* but the cache holds no teacher targets"):
        check_identity("c", dataclasses.replace(run, teacher=None), run)


def test_other_target_settings_with_the_same_weights_only_warn():
    with pytest.warns(UserWarning, match=r"other target settings.*precision.*\['fp16'\] -> \['fp32'\]"):
        check_identity("c", _identity(precision="fp16"), _identity(precision="fp32"))


def test_the_module_hash_follows_the_weights_not_the_object():
    first, second = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    second.load_state_dict(first.state_dict())
    assert module_sha256(first) == module_sha256(second)
    with torch.no_grad():
        second.bias[0] += 1e-6
    assert module_sha256(first) != module_sha256(second)
