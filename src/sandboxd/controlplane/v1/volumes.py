"""The v1 face of persistent volumes (protocol/v1.md §12), over ``sandboxd.volumes``.

Messages to and from :mod:`sandboxd.volumes` and nothing else. A ``PvcVolumeSource`` names
a local volume on a runner: ``claim_name`` is the directory's name there (checked like an
organization name, so it is one path component and never ``..``), ``sub_path`` a relative
path inside it, ``namespace`` is kept and echoed. Every malformed field is INVALID_ARGUMENT
naming it in v1 terms (``volume.spec.pvc.claim_name``); ``UpdateVolume`` changes
``spec.description`` and nothing else (another mask path is INVALID_ARGUMENT naming it).
Volumes are cluster-local (they live on one runner), ``ReadWriteMany`` or ``ReadOnlyMany``.
"""

from __future__ import annotations

import hashlib

from sandboxd.backends.base import VOLUME_NAME_RE, check_sub_path
from sandboxd.backends.errors import InvalidSpec
from sandboxd.controlplane.caller import current_caller
from sandboxd.controlplane.pagination import (
    decode_token,
    encode_token,
    filter_fingerprint,
    page_size_of,
    take_page,
)
from sandboxd.controlplane.v1.scratch_volumes import check_volume_name
from sandboxd.controlplane.wire_time import timestamp_or_none as _stamp
from sandboxd.errors import ApiError, invalid_argument
from sandboxd.volumes.model import VolumeRecord, VolumeState
from sandboxd.volumes.service import Volumes
from sandboxd_protocol.v1 import volume_pb2

P = volume_pb2
MAX_REQUEST_ID_CHARS = 128
MAX_DESCRIPTION_CHARS = 1024
MAX_RUNNER_ID_CHARS = 255
UPDATABLE = "spec.description"
_STATE = {
    VolumeState.VALIDATING: P.VOLUME_STATE_VALIDATING,
    VolumeState.READY: P.VOLUME_STATE_READY,
    VolumeState.ERROR: P.VOLUME_STATE_ERROR,
    VolumeState.DELETING: P.VOLUME_STATE_DELETING,
}
_FROM_STATE = {number: state for state, number in _STATE.items()}


def volume_message(record: VolumeRecord, attached: int = 0) -> volume_pb2.Volume:
    """The v1 ``Volume`` of a record."""
    return P.Volume(
        volume_id=record.volume_id,
        spec=P.VolumeSpec(
            pvc=P.PvcVolumeSource(
                runner_id=record.runner_id,
                namespace=record.namespace,
                claim_name=record.claim_name,
                sub_path=record.sub_path,
            ),
            read_only=record.read_only,
            description=record.description,
        ),
        status=P.VolumeStatus(
            state=_STATE[record.state],
            state_reason=record.state_reason,
            locality=P.VOLUME_LOCALITY_CLUSTER_LOCAL,
            create_time=_stamp(record.created_at),
            update_time=_stamp(record.updated_at),
            last_validated_time=_stamp(record.validated_at),
            access_modes=["ReadOnlyMany" if record.read_only else "ReadWriteMany"],
            attached_sandbox_count=attached,
        ),
    )


def _volume_id(volume_id: str, field: str = "volume_id") -> str:
    return check_volume_name(volume_id, field)


def _text(value: str, field: str, limit: int) -> str:
    if "\x00" in value or len(value) > limit:
        raise invalid_argument(field, f"must be at most {limit} characters, no NUL")
    return value


def parse_create(request: volume_pb2.CreateVolumeRequest) -> VolumeRecord:
    """Validate a create; the record to register (in the caller's organization)."""
    request_id = _text(request.request_id, "request_id", MAX_REQUEST_ID_CHARS)
    if not request.HasField("volume"):
        raise invalid_argument("volume", "is required (the volume to register)")
    volume = request.volume
    volume_id = _volume_id(volume.volume_id, "volume.volume_id")
    spec = volume.spec
    if spec.WhichOneof("source") != "pvc":
        raise invalid_argument("volume.spec.pvc", "is required (the runner and the claim name)")
    pvc = spec.pvc
    field = "volume.spec.pvc"
    runner_id = _text(pvc.runner_id.strip(), f"{field}.runner_id", MAX_RUNNER_ID_CHARS)
    if not runner_id:
        raise invalid_argument(f"{field}.runner_id", "must name the runner the volume is on")
    if not VOLUME_NAME_RE.fullmatch(pvc.namespace):
        raise invalid_argument(f"{field}.namespace", "must be a lower-case name such as 'default'")
    if not VOLUME_NAME_RE.fullmatch(pvc.claim_name):
        raise invalid_argument(
            f"{field}.claim_name",
            f"must be a lower-case name such as 'data' (got {pvc.claim_name[:80]!r})",
        )
    try:
        sub_path = check_sub_path(pvc.sub_path, f"{field}.sub_path")
    except InvalidSpec as exc:
        raise invalid_argument(exc.field, str(exc).removeprefix(f"{exc.field}: ")) from None
    description = _text(spec.description, "volume.spec.description", MAX_DESCRIPTION_CHARS)
    digest = hashlib.sha256(volume.SerializeToString(deterministic=True)).hexdigest()
    return VolumeRecord(
        owner_org=current_caller().organization,
        volume_id=volume_id,
        runner_id=runner_id,
        namespace=pvc.namespace,
        claim_name=pvc.claim_name,
        sub_path=sub_path,
        read_only=spec.read_only,
        description=description,
        request_id=request_id,
        request_digest=digest,
    )


class V1Volumes:
    """The six ``VolumeService`` RPCs."""

    def __init__(self, volumes: Volumes) -> None:
        self.volumes = volumes

    def _message(self, record: VolumeRecord) -> volume_pb2.Volume:
        return volume_message(record, self.volumes.attached(record))

    async def create(self, request: volume_pb2.CreateVolumeRequest) -> volume_pb2.Volume:
        """Register; VALIDATING until the runner has the directory (idempotent on request id)."""
        return self._message(await self.volumes.create(parse_create(request)))

    async def get(self, request: volume_pb2.GetVolumeRequest) -> volume_pb2.Volume:
        """One volume of the caller's organization."""
        return self._message(await self.volumes.get(_volume_id(request.volume_id)))

    async def list(self, request: volume_pb2.ListVolumesRequest) -> volume_pb2.ListVolumesResponse:
        """The organization's volumes by id, narrowed by ``states`` and ``runner_ids``."""
        size = page_size_of(request.page_size)
        states = []
        for index, number in enumerate(request.states):
            if number not in _FROM_STATE:
                raise invalid_argument(f"states[{index}]", f"unknown VolumeState value {number}")
            states.append(_FROM_STATE[number])
        runners = [r for r in request.runner_ids if r]
        fingerprint = "v1vol" + filter_fingerprint([sorted(states), sorted(runners)])
        after = decode_token(request.page_token, fingerprint)
        records = await self.volumes.page(after, size + 1, states, runners)
        page, last = take_page(iter(records), size, key=lambda r: r.volume_id)
        return P.ListVolumesResponse(
            volumes=[self._message(r) for r in page],
            next_page_token=encode_token(last, fingerprint) if last else "",
        )

    async def update(self, request: volume_pb2.UpdateVolumeRequest) -> volume_pb2.Volume:
        """Change ``spec.description``: the one field that may change."""
        volume_id = _volume_id(request.volume_id)
        if not request.HasField("volume"):
            raise invalid_argument("volume", "is required (the new description in its spec)")
        if request.volume.volume_id and request.volume.volume_id != volume_id:
            raise invalid_argument("volume.volume_id", "must be empty or equal volume_id")
        for index, path in enumerate(request.update_mask.paths):
            if path != UPDATABLE:
                raise invalid_argument(
                    f"update_mask.paths[{index}]",
                    f"{path[:80]!r} cannot be updated (only {UPDATABLE!r})",
                )
        description = _text(
            request.volume.spec.description, "volume.spec.description", MAX_DESCRIPTION_CHARS
        )
        return self._message(await self.volumes.update_description(volume_id, description))

    async def delete(self, request: volume_pb2.DeleteVolumeRequest) -> volume_pb2.Volume:
        """Forget it (DELETING once); mounted by a live sandbox: refused unless ``force``."""
        volume_id = _volume_id(request.volume_id)
        try:
            record = await self.volumes.delete(volume_id, force=request.force)
        except ApiError as error:
            if request.allow_missing and error.reason == "CWSANDBOX_VOLUME_NOT_FOUND":
                return P.Volume(volume_id=volume_id)
            raise
        return volume_message(record)

    async def validate(self, request: volume_pb2.ValidateVolumeRequest) -> volume_pb2.Volume:
        """Check the directory on its runner again; READY or ERROR with the reason."""
        return self._message(await self.volumes.validate(_volume_id(request.volume_id)))
