from django.contrib import admin

from .models import Artifact, AuditEvent, Job, Lane, ModelVersion, Route, Worker


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("name", "family", "location", "dtype", "status", "created_at")
    list_filter = ("status", "family")
    readonly_fields = ("content_hash",)


@admin.register(Lane)
class LaneAdmin(admin.ModelAdmin):
    list_display = ("name", "enabled", "active_version", "default_steps", "max_concurrency", "queue", "fallback")
    list_filter = ("enabled",)


@admin.register(Route)
class RouteAdmin(admin.ModelAdmin):
    list_display = ("intent", "label", "lane", "priority")


class ArtifactInline(admin.TabularInline):
    model = Artifact
    extra = 0
    readonly_fields = ("stage", "path", "width", "height", "sha256", "size_bytes", "created_at")


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "intent", "lane", "state", "submitted_at", "run_seconds")
    list_filter = ("state", "lane", "priority")
    search_fields = ("prompt",)
    list_select_related = ("owner", "lane")
    inlines = [ArtifactInline]
    readonly_fields = ("submitted_at", "dispatched_at", "started_at", "finished_at", "worker", "attempts")


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = ("ident", "device", "gpu_index", "queues", "last_seen", "stopped_at")


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the audit log is append-only from the application."""

    list_display = ("at", "actor_name", "action", "target", "note")
    list_filter = ("action", "lane_name", "actor_name")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
