from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    name = "console"

    def ready(self) -> None:
        # Imported here: signal receivers need the apps loaded, and console sits above them all.
        from datetime import timedelta

        from axes.signals import user_locked_out
        from django.conf import settings
        from django.utils import timezone

        from lanes.models import AuditEvent

        def record_lockout(sender, request=None, username=None, ip_address=None, **kwargs) -> None:
            # Once per lockout: every refused try while locked out sends the signal again.
            target = f"{username or '?'} from {ip_address or '?'}"[:200]
            since = timezone.now() - timedelta(hours=settings.AXES_COOLOFF_TIME)
            if not AuditEvent.objects.filter(action="login.locked-out", target=target, at__gte=since).exists():
                AuditEvent.record(None, "login.locked-out", target=target)

        user_locked_out.connect(record_lockout, dispatch_uid="laneway-lockout-audit", weak=False)
