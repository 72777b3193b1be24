"""The typography check of a job's image against its brief, and the human review of flagged ones."""

from __future__ import annotations

from django.conf import settings
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.access import visible_rows
from webhooks import outbox

from ..signals import announce_verified
from .fleet import Lane, ModelVersion
from .jobs import Artifact, Job


class VerificationQuerySet(models.QuerySet):
    def visible_to(self, user) -> VerificationQuerySet:
        # A shadow job's image goes to nobody's review: it is never delivered.
        return visible_rows(self.filter(job__shadow_of__isnull=True), user, "job__owner", "job__team_id")

    def awaiting_review(self) -> VerificationQuerySet:
        return self.filter(status=Verification.Status.FLAGGED, decision="")

    def pass_rates(self):
        """Pass rate per lane and model version over finished verifications (computed in the database)."""
        judged = self.filter(status__in=(Verification.Status.PASSED, Verification.Status.FLAGGED))
        return (
            judged.values("lane_id", "lane__name", "model_version_id", "model_version__name")
            .annotate(
                total=models.Count("id"),
                passed=models.Count("id", filter=Q(status=Verification.Status.PASSED)),
            )
            .order_by("lane__name", "model_version__name")
        )


class Verification(models.Model):
    """The OCR check of one artifact against the text its brief expects, and the review of it."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        PASSED = "passed"
        FLAGGED = "flagged"
        NOT_APPLICABLE = "not_applicable", "not applicable"
        ERROR = "error"

    class Decision(models.TextChoices):
        NONE = "", "awaiting review"
        APPROVED = "approved"
        REJECTED = "rejected"
        FIXED = "fixed", "auto-fixed"
        RERENDERED = "rerendered", "re-rendered"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="verifications")
    artifact = models.ForeignKey(Artifact, on_delete=models.CASCADE, related_name="verifications")
    lane = models.ForeignKey(Lane, null=True, on_delete=models.SET_NULL, related_name="+")
    model_version = models.ForeignKey(ModelVersion, null=True, on_delete=models.SET_NULL, related_name="+")
    source = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="followups",
        help_text="The flagged verification this one re-checks (after an auto-fix).",
    )  # fmt: skip
    expected = models.JSONField(default=list)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    reason = models.CharField(max_length=300, blank=True)
    details = models.JSONField(default=dict, blank=True)
    ocr_ms = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    decision = models.CharField(max_length=12, choices=Decision.choices, default="", blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    decided_at = models.DateTimeField(null=True, blank=True)

    objects = VerificationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"verification {self.pk} of job {self.job_id} ({self.status})"

    def finish(self, status: str, reason: str, details: dict | None = None, ocr_ms: float | None = None) -> bool:
        with transaction.atomic():
            done = Verification.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(
                status=status, reason=reason[:300], details=details or {}, ocr_ms=ocr_ms, finished_at=timezone.now()
            )
            if done:
                self.status, self.reason, self.details, self.ocr_ms = status, reason[:300], details or {}, ocr_ms
                if status == self.Status.FLAGGED:
                    outbox.emit("verification.flagged", self.webhook_data(), self.job.team_id)
                announce_verified(self.job_id)
        return bool(done)

    def decide(self, decision: str, by) -> bool:
        """Record a review decision once; False if someone already decided."""
        now = timezone.now()
        with transaction.atomic():
            done = Verification.objects.filter(pk=self.pk, decision="").update(
                decision=decision, decided_by=by, decided_at=now
            )
            if done:
                self.decision, self.decided_by, self.decided_at = decision, by, now
                outbox.emit("verification.reviewed", self.webhook_data(), self.job.team_id)
        return bool(done)

    def webhook_data(self) -> dict:
        """The verification as its webhooks (verification.flagged, verification.reviewed) describe it."""
        return {
            "id": self.pk,
            "job": self.job_id,
            "image": f"/jobs/{self.job_id}/{self.artifact.stage}.png",
            "status": self.status,
            "reason": self.reason,
            "expected": self.expected,
            "decision": self.decision,
            "decided_by": self.decided_by.get_username() if self.decided_by else None,
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
        }
