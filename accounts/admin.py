from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from .models import Member, Team


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("name",)
    search_fields = ("name",)


class MemberInline(admin.StackedInline):
    model = Member
    can_delete = False
    verbose_name_plural = "Laneway team and role"


class LanewayUserAdmin(UserAdmin):
    inlines = [MemberInline]
    list_display = ("username", "email", "is_active", "is_superuser", "last_login")


admin.site.unregister(get_user_model())
admin.site.register(get_user_model(), LanewayUserAdmin)
