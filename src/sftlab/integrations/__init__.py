"""What plugs sftlab into other people's training loops: :class:`AuditCallback` (a transformers TrainerCallback)."""

from sftlab.integrations.audit_callback import AuditCallback

__all__ = ["AuditCallback"]
