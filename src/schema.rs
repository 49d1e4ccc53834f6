//! Diesel table definitions shared by both backends. Written by hand to match
//! `migrations/sqlite` and `migrations/postgres`; `tests/api/schema.rs` checks all three agree.
//! Only types `MultiConnection` supports on both backends appear here (no Bool, no Binary).

diesel::table! {
    jobs (id) {
        id -> BigInt,
        queue -> Text,
        kind -> Text,
        payload -> Text,
        state -> Text,
        attempts -> Integer,
        max_attempts -> Integer,
        run_at -> Timestamp,
        locked_by -> Nullable<Text>,
        locked_until -> Nullable<Timestamp>,
        last_error -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        finished_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    tenants (id) {
        id -> BigInt,
        slug -> Text,
        name -> Text,
        created_at -> Timestamp,
        default_privacy -> Text,
        retention_days -> Nullable<Integer>,
        plan -> Text,
        plan_renews_at -> Nullable<Timestamp>,
        plan_changed_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    billing_orders (id) {
        id -> BigInt,
        tenant_id -> BigInt,
        user_id -> Nullable<BigInt>,
        plan -> Text,
        amount_minor -> BigInt,
        currency -> Text,
        provider -> Text,
        provider_order_id -> Nullable<Text>,
        reference -> Text,
        state -> Text,
        checkout_url -> Nullable<Text>,
        activated -> Bool,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        completed_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    credit_entries (id) {
        id -> BigInt,
        tenant_id -> BigInt,
        kind -> Text,
        amount -> BigInt,
        balance_after -> BigInt,
        order_id -> Nullable<BigInt>,
        user_id -> Nullable<BigInt>,
        reason -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    usage_daily (tenant_id, day) {
        tenant_id -> BigInt,
        day -> Text,
        requests -> BigInt,
        tokens -> BigInt,
    }
}

diesel::table! {
    users (id) {
        id -> BigInt,
        email -> Text,
        display_name -> Text,
        password_hash -> Nullable<Text>,
        email_verified_at -> Nullable<Timestamp>,
        disabled_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        failed_logins -> Integer,
        locked_until -> Nullable<Timestamp>,
        signup_plan -> Nullable<Text>,
        staff_role -> Nullable<Text>,
    }
}

diesel::table! {
    sessions (id) {
        id -> Text,
        user_id -> BigInt,
        created_at -> Timestamp,
        last_seen_at -> Timestamp,
        expires_at -> Timestamp,
        ip -> Nullable<Text>,
        user_agent -> Nullable<Text>,
    }
}

diesel::table! {
    email_tokens (id) {
        id -> Text,
        user_id -> BigInt,
        purpose -> Text,
        created_at -> Timestamp,
        expires_at -> Timestamp,
        used_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    totp_secrets (user_id) {
        user_id -> BigInt,
        secret_sealed -> Text,
        confirmed_at -> Nullable<Timestamp>,
        last_used_step -> Nullable<BigInt>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    recovery_codes (id) {
        id -> BigInt,
        user_id -> BigInt,
        code_hash -> Text,
        used_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    remembered_devices (id) {
        id -> Text,
        user_id -> BigInt,
        created_at -> Timestamp,
        expires_at -> Timestamp,
    }
}

diesel::table! {
    mfa_challenges (id) {
        id -> Text,
        user_id -> BigInt,
        expires_at -> Timestamp,
        attempts -> Integer,
    }
}

diesel::table! {
    api_tokens (id) {
        id -> BigInt,
        user_id -> BigInt,
        name -> Text,
        token_hash -> Text,
        scopes -> Text,
        created_at -> Timestamp,
        expires_at -> Nullable<Timestamp>,
        last_used_at -> Nullable<Timestamp>,
        revoked_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    invitations (id) {
        id -> BigInt,
        tenant_id -> BigInt,
        email -> Text,
        role -> Text,
        token_hash -> Text,
        invited_by -> Nullable<BigInt>,
        created_at -> Timestamp,
        expires_at -> Timestamp,
        accepted_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    memberships (tenant_id, user_id) {
        tenant_id -> BigInt,
        user_id -> BigInt,
        role -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    audit_events (id) {
        id -> BigInt,
        at -> Timestamp,
        event -> Text,
        actor_user_id -> Nullable<BigInt>,
        tenant_id -> Nullable<BigInt>,
        subject -> Nullable<Text>,
        ip -> Nullable<Text>,
        user_agent -> Nullable<Text>,
        details -> Text,
    }
}

diesel::table! {
    oidc_flows (id) {
        id -> Text,
        provider -> Text,
        verifier_sealed -> Text,
        nonce -> Text,
        next_path -> Text,
        link_user_id -> Nullable<BigInt>,
        created_at -> Timestamp,
        expires_at -> Timestamp,
    }
}

diesel::table! {
    user_identities (id) {
        id -> BigInt,
        user_id -> BigInt,
        provider -> Text,
        subject -> Text,
        email -> Text,
        tokens_sealed -> Nullable<Text>,
        created_at -> Timestamp,
        last_login_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    captcha_spent (signature) {
        signature -> Text,
        expires_at -> Timestamp,
    }
}

diesel::table! {
    rooms (id) {
        id -> BigInt,
        tenant_id -> BigInt,
        kind -> Text,
        name -> Text,
        topic -> Text,
        visibility -> Text,
        privacy -> Text,
        retention_days -> Nullable<Integer>,
        legal_hold -> Bool,
        archived_at -> Nullable<Timestamp>,
        direct_key -> Nullable<Text>,
        created_by -> Nullable<BigInt>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    room_members (room_id, member_kind, member_id) {
        room_id -> BigInt,
        member_kind -> Text,
        member_id -> BigInt,
        role -> Text,
        joined_at -> Timestamp,
    }
}

diesel::table! {
    conversation_keys (room_id) {
        room_id -> BigInt,
        kek_id -> Text,
        wrapped -> Text,
        created_at -> Timestamp,
        rewrapped_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    assistant_usage (id) {
        id -> BigInt,
        tenant_id -> BigInt,
        user_id -> Nullable<BigInt>,
        day -> Text,
        model -> Text,
        variant -> Text,
        source -> Text,
        prompt_tokens -> BigInt,
        completion_tokens -> BigInt,
        estimated -> Bool,
        outcome -> Text,
        first_token_ms -> Nullable<BigInt>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    assistant_rooms (room_id) {
        room_id -> BigInt,
        mode -> Text,
        enabled -> Bool,
        model -> Text,
        system_prompt -> Text,
        untitled -> Bool,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    assistant_replies (id) {
        id -> BigInt,
        room_id -> BigInt,
        user_id -> Nullable<BigInt>,
        prompt_message_id -> BigInt,
        message_id -> Nullable<BigInt>,
        model -> Text,
        variant -> Nullable<Text>,
        state -> Text,
        error -> Nullable<Text>,
        stop_requested -> Bool,
        lease_until -> Nullable<Timestamp>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    assistant_preferences (user_id) {
        user_id -> BigInt,
        system_prompt -> Text,
        model -> Text,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    read_markers (room_id, user_id) {
        room_id -> BigInt,
        user_id -> BigInt,
        message_id -> BigInt,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    personal_keys (user_id) {
        user_id -> BigInt,
        salt -> Text,
        m_cost -> Integer,
        t_cost -> Integer,
        p_cost -> Integer,
        wrapped -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    messages (id) {
        id -> BigInt,
        room_id -> BigInt,
        sender_kind -> Text,
        sender_id -> Nullable<BigInt>,
        body_sealed -> Nullable<Binary>,
        reply_to -> Nullable<BigInt>,
        idempotency_key -> Nullable<Text>,
        created_at -> Timestamp,
        edited_at -> Nullable<Timestamp>,
        deleted_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    message_terms (term, message_id) {
        term -> Binary,
        message_id -> BigInt,
    }
}

diesel::joinable!(memberships -> tenants (tenant_id));
diesel::joinable!(memberships -> users (user_id));
diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(email_tokens -> users (user_id));
diesel::joinable!(api_tokens -> users (user_id));
diesel::joinable!(invitations -> tenants (tenant_id));
diesel::joinable!(user_identities -> users (user_id));
diesel::joinable!(rooms -> tenants (tenant_id));
diesel::joinable!(room_members -> rooms (room_id));
diesel::joinable!(conversation_keys -> rooms (room_id));
diesel::joinable!(personal_keys -> users (user_id));
diesel::joinable!(read_markers -> rooms (room_id));
diesel::joinable!(assistant_usage -> tenants (tenant_id));
diesel::joinable!(billing_orders -> tenants (tenant_id));
diesel::table! {
    edge_policies (version) {
        version -> BigInt,
        document -> Text,
        comment -> Text,
        rolled_back_from -> Nullable<BigInt>,
        created_by -> Nullable<BigInt>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    edge_agents (name) {
        name -> Text,
        format -> Text,
        applied_version -> Nullable<BigInt>,
        status -> Text,
        error -> Nullable<Text>,
        address -> Nullable<Text>,
        reported_at -> Timestamp,
    }
}

diesel::table! {
    user_preferences (user_id) {
        user_id -> BigInt,
        version -> Integer,
        document -> Text,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    devices (id) {
        id -> BigInt,
        tenant_id -> BigInt,
        name -> Text,
        kind -> Text,
        tags -> Text,
        firmware -> Nullable<Text>,
        chip -> Nullable<Text>,
        last_seen_at -> Nullable<Timestamp>,
        last_seq -> BigInt,
        created_by -> Nullable<BigInt>,
        created_at -> Timestamp,
        readings_dropped -> BigInt,
    }
}

diesel::table! {
    device_tokens (id) {
        id -> Text,
        device_id -> BigInt,
        created_at -> Timestamp,
        last_used_at -> Nullable<Timestamp>,
        revoked_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    device_claims (id) {
        id -> Text,
        tenant_id -> BigInt,
        name -> Text,
        kind -> Text,
        tags -> Text,
        created_by -> Nullable<BigInt>,
        created_at -> Timestamp,
        expires_at -> Timestamp,
        used_at -> Nullable<Timestamp>,
        device_id -> Nullable<BigInt>,
    }
}

diesel::table! {
    telemetry (id) {
        id -> BigInt,
        device_id -> BigInt,
        metric -> Text,
        at -> Timestamp,
        value -> Double,
        seq -> BigInt,
    }
}

diesel::table! {
    device_commands (id) {
        id -> BigInt,
        device_id -> BigInt,
        name -> Text,
        args -> Text,
        status -> Text,
        output -> Nullable<Text>,
        room_id -> Nullable<BigInt>,
        message_id -> Nullable<BigInt>,
        created_by -> Nullable<BigInt>,
        created_at -> Timestamp,
        sent_at -> Nullable<Timestamp>,
        done_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    device_rules (id) {
        id -> BigInt,
        device_id -> BigInt,
        room_id -> BigInt,
        metric -> Text,
        op -> Text,
        threshold -> Double,
        firing -> Bool,
        created_by -> Nullable<BigInt>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    telemetry_hourly (device_id, metric, hour) {
        device_id -> BigInt,
        metric -> Text,
        hour -> Timestamp,
        min -> Double,
        max -> Double,
        sum -> Double,
        count -> BigInt,
    }
}

diesel::table! {
    firmware_keys (id) {
        id -> BigInt,
        tenant_id -> BigInt,
        name -> Text,
        public_key -> Text,
        created_by -> Nullable<BigInt>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    firmware_images (id) {
        id -> BigInt,
        tenant_id -> BigInt,
        version -> Text,
        size -> BigInt,
        sha256 -> Text,
        signature -> Text,
        key_id -> Nullable<BigInt>,
        data -> Binary,
        created_by -> Nullable<BigInt>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    ota_rollouts (id) {
        id -> BigInt,
        tenant_id -> BigInt,
        image_id -> BigInt,
        previous_image_id -> Nullable<BigInt>,
        target -> Text,
        stages -> Text,
        stage -> Integer,
        success_threshold -> Double,
        failure_threshold -> Double,
        state -> Text,
        reason -> Nullable<Text>,
        created_by -> Nullable<BigInt>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    ota_assignments (rollout_id, device_id) {
        rollout_id -> BigInt,
        device_id -> BigInt,
        stage -> Integer,
        image_id -> BigInt,
        state -> Text,
        received -> BigInt,
        detail -> Nullable<Text>,
        updated_at -> Timestamp,
    }
}

diesel::joinable!(credit_entries -> tenants (tenant_id));
diesel::joinable!(telemetry -> devices (device_id));
diesel::joinable!(ota_assignments -> devices (device_id));
diesel::joinable!(ota_assignments -> ota_rollouts (rollout_id));
diesel::joinable!(devices -> tenants (tenant_id));
diesel::joinable!(device_tokens -> devices (device_id));
diesel::joinable!(user_preferences -> users (user_id));
diesel::joinable!(usage_daily -> tenants (tenant_id));
diesel::joinable!(assistant_rooms -> rooms (room_id));
diesel::joinable!(assistant_replies -> rooms (room_id));
diesel::joinable!(messages -> rooms (room_id));
diesel::joinable!(message_terms -> messages (message_id));
diesel::allow_tables_to_appear_in_same_query!(
    jobs,
    rooms,
    room_members,
    conversation_keys,
    messages,
    message_terms,
    personal_keys,
    read_markers,
    assistant_usage,
    assistant_rooms,
    assistant_replies,
    assistant_preferences,
    billing_orders,
    credit_entries,
    usage_daily,
    edge_policies,
    edge_agents,
    user_preferences,
    devices,
    device_tokens,
    device_claims,
    telemetry,
    device_commands,
    device_rules,
    telemetry_hourly,
    firmware_keys,
    firmware_images,
    ota_rollouts,
    ota_assignments,
    tenants,
    users,
    sessions,
    email_tokens,
    totp_secrets,
    recovery_codes,
    remembered_devices,
    mfa_challenges,
    api_tokens,
    invitations,
    memberships,
    audit_events,
    oidc_flows,
    user_identities,
    captcha_spent
);
